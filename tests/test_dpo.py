"""DPO: train_dpo.py --tiny on the session's SFT model, what it learned on the held-out pairs, what it wrote, and its
errors."""

import json
import math

import pytest
import torch
from trl import DPOConfig

import common
from conftest import FLOAT32_EPS, log_prob_sum_tolerance, run_main
from hfppo import adapters, charts, checkpoints, lora, paths

# What TrainingArguments and DPOConfig default to and the tiny run keeps: the held-out pairs are evaluated in batches
# of 8, and DPO's implicit reward is beta x log(policy / reference).
EVAL_BATCH_SIZE = 8
BETA = DPOConfig.beta
# The tiny run's held-out figures at its end, measured 0.645 (margin) and 0.925 (accuracy) on a 2-core AMD EPYC; kept
# well below, since a run's digits move between CPUs (README, "Take the digits as an example").
HELD_OUT_MARGIN, HELD_OUT_ACCURACY = 0.3, 0.6
LOG_2 = math.log(2)  # DPO's loss -log sigmoid(margin) at margin 0


def answer_log_prob(model, tokenizer, row: dict, column: str) -> tuple[float, float]:
    """The summed log-probability of the `column` answer's tokens after the prompt, the sequence DPOTrainer scores
    (the chat template's prompt with the generation prompt, then the rest of the rendered conversation), and how far
    DPOTrainer's own float32 figure for it, from padded batches, may lie from this one of the row alone."""
    prompt = common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT)
    messages = common.prompt_messages(row, paths.DEFAULT_SYSTEM_PROMPT)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": row[column]}])["input_ids"]
    assert full[: len(prompt)] == prompt
    ids = torch.tensor([full])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    answer = log_probs[len(prompt) - 1 :]
    return answer.sum().item(), log_prob_sum_tolerance(answer)


def answer_log_probs(model, tokenizer, rows, column: str) -> torch.Tensor:
    """answer_log_prob of each row: a tensor of the log-probabilities and one of their tolerances."""
    return torch.tensor([answer_log_prob(model, tokenizer, row, column) for row in rows]).T


def mean_of_batch_means(values: torch.Tensor) -> torch.Tensor:
    """What DPOTrainer logs for an evaluation: the mean of its batches' means."""
    return torch.stack([batch.mean() for batch in values.split(EVAL_BATCH_SIZE)]).mean()


def mean_of_batch_means_rounding(magnitudes: torch.Tensor) -> float:
    """How far two float32 mean_of_batch_means of the same values may lie apart: the batch means' sums and the sum
    of the batch means, in other orders (float32_sum_tolerance), weighted as the values are."""
    batches = math.ceil(len(magnitudes) / EVAL_BATCH_SIZE)
    return (EVAL_BATCH_SIZE + batches) * FLOAT32_EPS * mean_of_batch_means(magnitudes.abs()).item()


def test_the_adapter_prefers_the_chosen_answers_on_held_out_pairs_as_logged(dpo_run):
    """The saved adapter, against the SFT model it names (the adapter switched off, TRL's reference), ranks the rude
    answer above the polite one on pairs no stage trained on, and reproduces the last held-out evaluation that
    TensorBoard shows: so the reference is the SFT model, the adapter saved is the one trained, and DPO saw the chat
    format every stage uses."""
    policy, tokenizer = common.load_policy(dpo_run / paths.DPO_DIR, "python train_dpo.py --tiny", tiny=True)
    held_out = common.load_preference_data(dpo_run / paths.DPO_DIR / paths.HELD_OUT_FILE)
    rewards, tolerances = {}, {}
    for column in ("chosen", "rejected"):
        trained, trained_tolerance = answer_log_probs(policy, tokenizer, held_out, column)
        with policy.disable_adapter():
            reference, reference_tolerance = answer_log_probs(policy, tokenizer, held_out, column)
        rewards[column] = BETA * (trained - reference)
        tolerances[column] = BETA * (trained_tolerance + reference_tolerance)
    margins = rewards["chosen"] - rewards["rejected"]
    assert margins.mean() > HELD_OUT_MARGIN and (margins > 0).float().mean() > HELD_OUT_ACCURACY

    (run_dir,) = (dpo_run / paths.TENSORBOARD_ROOT / "dpo").iterdir()
    scalars = charts.read_scalars(run_dir)
    # DPOTrainer scored the pairs in padded batches of 8, these one at a time: each margin within its four answers'
    # tolerances (conftest.log_prob_sum_tolerance, x beta), then the means' own rounding. About 1e-3 of the margin,
    # where a reference other than the SFT model, another adapter or another chat format moves it by tenths.
    tolerance = tolerances["chosen"] + tolerances["rejected"]
    logged_margin = scalars["eval/rewards/margins"][-1][1]
    rounding = mean_of_batch_means_rounding(margins.abs() + tolerance)
    expected = mean_of_batch_means(margins).item()
    assert logged_margin == pytest.approx(expected, abs=mean_of_batch_means(tolerance).item() + rounding)
    # a pair whose margin lies within its tolerance of 0 may have been ranked either way
    surely_right = mean_of_batch_means((margins > tolerance).float()).item()
    maybe_right = mean_of_batch_means((margins > -tolerance).float()).item()
    rounding = mean_of_batch_means_rounding(torch.ones_like(margins))
    assert surely_right - rounding <= scalars["eval/rewards/accuracies"][-1][1] <= maybe_right + rounding
    # Exact: the first step's batch was scored by an adapter that had not moved yet (LoRA's B is 0, so the adapter
    # adds exactly 0.0) against the reference in the same batch, the same shapes
    assert scalars["train/rewards/margins"][0] == (1, 0.0)


def test_held_out_loss_fell_and_the_run_says_where_its_outputs_went(dpo_run, sft_run):
    (run_dir,) = (dpo_run / paths.TENSORBOARD_ROOT / "dpo").iterdir()
    scalars = charts.read_scalars(run_dir)
    losses = [value for _, value in scalars["eval/loss"]]
    # before the first step (log 2: margin 0, the adapter is the identity, each pair's loss log 2 rounded to float32,
    # then meaned by batches) and at the end: 0.447 measured on a 2-core AMD EPYC
    held_out = common.load_preference_data(dpo_run / paths.DPO_DIR / paths.HELD_OUT_FILE)
    rounding = mean_of_batch_means_rounding(torch.full((held_out.num_rows,), LOG_2))
    assert len(losses) == 2 and losses[0] == pytest.approx(LOG_2, abs=rounding) and losses[-1] < LOG_2 - 0.1
    assert scalars["eval/rewards/margins"][0] == (0, 0.0)  # exact: the adapter adds 0.0 (see above)
    assert (run_dir / "dpo.png").read_bytes().startswith(b"\x89PNG")
    printed = (dpo_run / "train.out").read_text()
    assert "{'" not in printed  # per-step values go to TensorBoard only
    assert "Trained 39 steps in " in printed  # 310 training pairs, batches of 8, 1 epoch
    errors = (dpo_run / "train.err").read_text()
    for noise in ("couldn't be hashed", "PicklingWarning", "Tokenizing", "Map", "\x1b[", "is_gradient_checkpointing"):
        assert noise not in errors, noise
    last = printed.splitlines()[-1]
    assert last.startswith(f"Adapter saved to {paths.DPO_DIR}; curves in {(run_dir / 'dpo.png').relative_to(dpo_run)}")
    assert last.endswith(f"compare.py --tiny --sft_model_path {sft_run / paths.SFT_DIR}")


def test_outputs_an_adapter_of_the_shared_shape_beside_the_sft_split(dpo_run, sft_run):
    output = dpo_run / paths.DPO_DIR
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(sft_run / paths.SFT_DIR)
    base = json.loads((output / paths.ADAPTER_BASE_FILE).read_text())  # and the record of it (hfppo/adapters.py)
    sft = sft_run / paths.SFT_DIR
    assert base == {"base_model_path": str(sft.resolve()), "fingerprint": adapters.fingerprint(sft)}
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (lora.LORA_R, lora.LORA_ALPHA, 0)
    assert set(adapter["target_modules"]) == set(lora.LORA_TARGET_MODULES)
    held_out = (output / paths.HELD_OUT_FILE).read_bytes()
    assert held_out == (sft_run / paths.SFT_DIR / paths.HELD_OUT_FILE).read_bytes()
    results = json.loads((output / paths.TRAIN_RESULTS_FILE).read_text())
    assert set(results) == {"train_runtime", "train_samples_per_second"} and results["train_runtime"] > 0
    checkpoints.require_checkpoint(output, "", "adapter")


def test_without_the_adapter_it_trains_every_parameter_into_a_whole_model(sft_run, tmp_path):
    """--use_peft false is allowed: DPOTrainer then loads a second, frozen copy of the SFT model as the reference, and
    the output is a whole model, which common.load_policy loads as well."""
    flags = ("--use_peft", "false", "--max_steps", 1, "--eval_strategy", "no", "--eval_on_start", "false")
    result = run_main("train_dpo.py", "--tiny", "--sft_model_path", sft_run / paths.SFT_DIR, *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(every one)" in result.stdout and "Model saved to checkpoint/dpo" in result.stdout
    model, _ = common.load_policy(tmp_path / paths.DPO_DIR, "", tiny=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"


# ----------------------------------------------------------------------------------------------------------------
# Errors: one message, no traceback, nothing written


def assert_refused(result, status: int, *messages):
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for message in messages:
        assert message in result.stderr


def test_without_an_sft_model_says_which_stage_to_run(tmp_path):
    assert_refused(run_main("train_dpo.py", "--tiny", cwd=tmp_path), 1, "no model at checkpoint/sft", "train_sft.py")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "tensorboard").exists()


def test_refuses_an_sft_model_trained_with_another_split(sft_run, tmp_path):
    sft = sft_run / paths.SFT_DIR
    result = run_main("train_dpo.py", "--tiny", "--sft_model_path", sft, "--eval_fraction", 0.2, cwd=tmp_path)
    assert_refused(result, 1, f"the SFT model (--sft_model_path {sft}) was trained with another held-out split")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "tensorboard").exists()


def test_refuses_an_adapter_as_the_sft_model(dpo_run, tmp_path):
    result = run_main("train_dpo.py", "--tiny", "--sft_model_path", dpo_run / paths.DPO_DIR, cwd=tmp_path)
    assert_refused(result, 1, "is a LoRA adapter", "cannot be the language model", "train_sft.py --tiny")


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--model_name_or_path", "x"), "pass it as --sft_model_path"),
        (("--sync_ref_model", "true"), "Drop --sync_ref_model, or add --use_peft false"),
    ],
)
def test_flags_that_do_not_fit_dpo_are_refused_before_anything_loads(tmp_path, flags, message):
    assert_refused(run_main("train_dpo.py", "--tiny", *flags, cwd=tmp_path), 2, message)
