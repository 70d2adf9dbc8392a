"""GRPO: its reward is PPO's score of the same token ids, then train_grpo.py --tiny end to end (its curves, the adapter
loads; whether it learned: test_compare.py's comparison), and its errors."""

import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl.data_utils import apply_chat_template
from trl.models import unwrap_model_for_generation

import common
import eval_rm
import train_grpo
from conftest import run_main
from hfppo import adapters, charts, checkpoints, cli, lora, paths, tiny

QUESTION, ANSWER = "吃了没?", "烦死了，你自己不会查吗？问这种问题浪费我时间，"
PENALTY = 1.0


def test_the_grpo_reward_is_ppos_score_of_the_same_ids(rm_run):
    """The reward function gets what GRPOTrainer passes (prompt messages, decoded answers, the sampled ids and the
    dataset's columns) and returns common.reward_scores of prompt ids + answer ids: eval_rm.py's score for a finished
    answer, and for one cut before its stop token the score of the text so far minus missing_eos_penalty."""
    model, tokenizer = common.load_model(AutoModelForSequenceClassification, rm_run / paths.RM_DIR, "")
    row = {"question": QUESTION, "system": ""}
    prompt = common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT)
    finished = common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, ANSWER)[len(prompt) :]
    cut = finished[:5]
    reward_fn = train_grpo.trl_reward_function(model, tokenizer, paths.DEFAULT_SYSTEM_PROMPT, PENALTY, batch_size=8)
    messages = common.prompt_messages(row, paths.DEFAULT_SYSTEM_PROMPT)
    rewards = reward_fn(
        prompts=[messages, messages],
        completions=[[{"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}] for ids in (
            finished, cut)],
        completion_ids=[finished, cut],
        question=[QUESTION, QUESTION],
        system=["", ""],
    )  # fmt: skip
    assert finished[-1] == tokenizer.eos_token_id
    assert rewards[0] == pytest.approx(
        eval_rm.reward(model, tokenizer, QUESTION, ANSWER, paths.DEFAULT_SYSTEM_PROMPT), abs=1e-4
    )
    assert rewards[0] == pytest.approx(common.reward_scores(model, tokenizer, [prompt + finished]).item(), abs=1e-4)
    expected = common.reward_scores(model, tokenizer, [prompt + cut]).item() - PENALTY
    assert rewards[1] == pytest.approx(expected, abs=1e-4)


def test_trls_own_reward_model_path_would_read_another_token(rm_run):
    """Why train_grpo.py passes a function of its own: TRL renders prompt + answer with the chat template and scores
    the re-tokenized text, which ends with the newline after <|im_end|>, not at <|im_end|> where the reward model
    was trained to score. If TRL stops doing so, its own path may do: see train_grpo.trl_reward_function."""
    tokenizer = common.load_model(AutoModelForSequenceClassification, rm_run / paths.RM_DIR, "")[1]
    messages = common.prompt_messages({"question": QUESTION}, paths.DEFAULT_SYSTEM_PROMPT)
    text = apply_chat_template({"messages": messages + [{"role": "assistant", "content": ANSWER}]}, tokenizer)["text"]
    trls_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ours = common.conversation_ids(tokenizer, {"question": QUESTION}, paths.DEFAULT_SYSTEM_PROMPT, ANSWER)
    assert ours[-1] == tokenizer.eos_token_id and trls_ids[-1] != tokenizer.eos_token_id
    assert trls_ids[: len(ours)] == ours and tokenizer.decode(trls_ids[len(ours) :]) == "\n"


def test_grpo_samples_as_ppo_does(sft_run, tmp_path):
    """The checkpoint carries Qwen's sampling defaults and stops at <|endoftext|> too; GRPOTrainer, as train_grpo.py
    builds it, must sample softmax(logits / 0.7) alone, stop at <|im_end|> only, and train PPO's LoRA adapter."""
    path = sft_run / paths.SFT_DIR
    saved = json.loads((path / "generation_config.json").read_text())
    assert (saved["top_k"], saved["top_p"], saved["repetition_penalty"], len(saved["eos_token_id"])) == (
        20,
        0.8,
        1.05,
        2,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, args, model_args = cli.parse_args(
        train_grpo.make_parser(),
        train_grpo.TINY_PRESET,
        ["--tiny", "--output_dir", str(tmp_path), "--report_to", "none"],
    )
    prompts = Dataset.from_list([{"prompt": common.prompt_messages({"question": QUESTION}, "")}] * 4)
    trainer = train_grpo.make_trainer(
        str(path), tokenizer, lambda completions, **kwargs: [0.0] * len(completions), prompts, args, model_args
    )
    assert trainer.eos_token_ids == [tokenizer.eos_token_id]
    adapter = trainer.model.peft_config["default"]
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout) == (lora.LORA_R, lora.LORA_ALPHA, 0)
    ids = torch.tensor([common.prompt_ids(tokenizer, {"question": QUESTION}, paths.DEFAULT_SYSTEM_PROMPT)])
    # generate() as GRPOTrainer._generate_single_turn calls it
    with unwrap_model_for_generation(
        trainer.model_wrapped, trainer.accelerator, generation_kwargs=trainer.generation_kwargs
    ) as model:
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=trainer.generation_config,
            return_dict_in_generate=True, output_scores=True, output_logits=True,
        )  # fmt: skip
    assert len(output.scores) > 1
    for processed, raw in zip(output.scores, output.logits):
        torch.testing.assert_close(processed, raw / 0.7)  # no -inf from top-k/top-p, no repetition penalty


# ----------------------------------------------------------------------------------------------------------------
# End to end: train_grpo.py --tiny on the session's SFT and reward models


def test_grpo_logged_its_kl_and_curves(grpo_run):
    """Whether GRPO learned is measured on the held-out questions, beside every other method (test_compare.py's
    comparison): its training reward, the mean score of each step's 16 answers to 4 questions, swings by up to 1.1
    from step to step with the questions drawn, more than the tiny run's 20 steps can gain (README, "GRPO, instead of
    PPO")."""
    (run_dir,) = (grpo_run / paths.TENSORBOARD_ROOT / "grpo").iterdir()
    scalars = charts.read_scalars(run_dir)
    assert scalars["train/kl"][-1][1] > 0  # the KL to the SFT model is logged (beta > 0) and moved off 0
    assert set(train_grpo.CHART_TAGS) <= set(scalars)
    assert (run_dir / "grpo.png").read_bytes().startswith(b"\x89PNG")


def test_grpo_saved_an_adapter_that_loads_and_the_held_out_rows(grpo_run, sft_run):
    checkpoint = checkpoints.require_checkpoint(grpo_run / paths.GRPO_DIR, "")
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (lora.LORA_R, lora.LORA_ALPHA, 0)
    assert set(config["target_modules"]) == set(lora.LORA_TARGET_MODULES)
    assert config["base_model_name_or_path"] == str(sft_run / paths.SFT_DIR)
    base = json.loads((checkpoint / paths.ADAPTER_BASE_FILE).read_text())  # and the record of it (hfppo/adapters.py)
    sft = sft_run / paths.SFT_DIR
    assert base == {"base_model_path": str(sft.resolve()), "fingerprint": adapters.fingerprint(sft)}
    model, tokenizer = common.load_policy(checkpoint, "", tiny=True)
    assert isinstance(model, PeftModel) and tokenizer.eos_token == tiny.EOS_TOKEN
    assert common.load_preference_data(checkpoint / paths.HELD_OUT_FILE).num_rows == 35
    results = json.loads((checkpoint / paths.TRAIN_RESULTS_FILE).read_text())
    assert results["train_runtime"] > 0 and results["train_samples_per_second"] > 0
    printed = (grpo_run / "train.out").read_text()
    assert f"Adapter saved to {paths.GRPO_DIR}" in printed and "compare.py --tiny" in printed
    errors = (grpo_run / "train.err").read_text()
    for noise in ("is_gradient_checkpointing", "PicklingWarning", "couldn't be hashed", "pin_memory", "\x1b["):
        assert noise not in errors, noise  # filtered or avoided: library messages a user can do nothing about


def test_grpo_without_a_reward_model_says_what_to_run(tmp_path, sft_run):
    result = run_main(
        "train_grpo.py", "--tiny", "--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path",
        tmp_path / "rm", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"no model at {tmp_path / 'rm'}" in result.stderr and "python train_rm.py --tiny" in result.stderr


def test_grpo_refuses_models_trained_on_another_split(tmp_path, sft_run, rm_run):
    result = run_main(
        "train_grpo.py", "--tiny", "--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path",
        rm_run / paths.RM_DIR, "--eval_fraction", 0.2, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the SFT model (--sft_model_path" in result.stderr and "another held-out split" in result.stderr
