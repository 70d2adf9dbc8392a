"""The offline tiny preset: deterministic, Qwen-shaped, and polite before SFT like the real base."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from trl.chat_template_utils import qwen2_5_chat_template

import common
from conftest import answer_log_likelihood


def test_same_seed_builds_the_same_weights_and_tokenizer(tiny_base, tmp_path):
    again = tmp_path / "tiny"
    common.build_tiny_base(again)
    assert (again / "tokenizer.json").read_bytes() == (tiny_base / "tokenizer.json").read_bytes()
    first = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not list(tmp_path.glob("*.partial"))


def test_tokenizer_and_model_look_like_qwen(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template == qwen2_5_chat_template
    config = json.loads((tiny_base / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["hidden_size"] <= 128
    # Qwen's sampling defaults travel with the checkpoint, as they do with the real model.
    generation = GenerationConfig.from_pretrained(tiny_base)
    assert (generation.top_k, generation.top_p) == (20, 0.8)
    assert tokenizer.eos_token_id in generation.eos_token_id


def test_tiny_base_prefers_polite_answers(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    rows = common.load_preference_data(common.SAMPLE_DATA).select(range(40))
    polite = answer_log_likelihood(model, tokenizer, rows, "rejected")
    rude = answer_log_likelihood(model, tokenizer, rows, "chosen")
    # measured 0.86 nats per token apart (-5.24 against -6.10) on a 2-core AMD EPYC: one token per character
    assert polite > rude + 0.5, (polite, rude)
