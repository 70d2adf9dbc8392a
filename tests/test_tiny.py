"""The offline tiny preset: deterministic, Qwen-shaped, and polite before SFT like the real base."""

import json
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from trl.chat_template_utils import qwen2_5_chat_template

import common
from conftest import answer_log_likelihood
from hfppo import checkpoints, paths, tiny


def test_same_seed_builds_the_same_weights_and_tokenizer(tiny_base, tmp_path, monkeypatch, capsys):
    """Built again where the preset keeps it, over a copy of the base whose recipe file an earlier version would not
    have written: resolve_model rebuilds it there, and the new one is bitwise the first."""
    monkeypatch.chdir(tmp_path)
    again = paths.TINY_BASE_DIR
    shutil.copytree(tiny_base, again)
    (again / tiny.TINY_RECIPE_FILE).unlink()
    assert common.resolve_model(again, "tiny") == str(again)
    assert "was built by another recipe of the tiny preset" in capsys.readouterr().out
    assert json.loads((again / tiny.TINY_RECIPE_FILE).read_text()) == tiny.tiny_recipe()
    assert (again / "tokenizer.json").read_bytes() == (tiny_base / "tokenizer.json").read_bytes()
    first = AutoModelForCausalLM.from_pretrained(tiny_base).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not list(again.parent.glob(f".*{checkpoints.PARTIAL}"))


def test_only_the_presets_own_folder_is_rebuilt_and_only_from_another_recipe(tiny_base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_base, paths.TINY_BASE_DIR)
    assert not tiny.stale_tiny_base(paths.TINY_BASE_DIR)  # built by today's recipe
    assert common.resolve_model(paths.TINY_BASE_DIR, "tiny") == str(paths.TINY_BASE_DIR)  # reused as is
    stamp = paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE
    stamp.write_text(json.dumps(tiny.tiny_recipe() | {"tokenizer": "byte-level BPE, merges across characters"}))
    assert tiny.stale_tiny_base(paths.TINY_BASE_DIR)  # another tokenizer, model, training or data
    stamp.unlink()
    assert tiny.stale_tiny_base(paths.TINY_BASE_DIR)  # built before the recipe was written down
    elsewhere = tmp_path / "mine"
    shutil.copytree(paths.TINY_BASE_DIR, elsewhere)
    assert not tiny.stale_tiny_base(elsewhere)  # a folder of the user's is theirs, whatever it holds
    assert common.resolve_model(elsewhere, "tiny") == str(elsewhere)
    assert not tiny.stale_tiny_base(tmp_path / "nothing")


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
    rows = common.load_preference_data(paths.SAMPLE_DATA).select(range(40))
    polite = answer_log_likelihood(model, tokenizer, rows, "rejected")
    rude = answer_log_likelihood(model, tokenizer, rows, "chosen")
    # measured 0.93 nats per token apart (-5.20 against -6.13) on a 2-core AMD EPYC: one token per character
    assert polite > rude + 0.5, (polite, rude)
