"""The reward model: where the score is read, then train_rm.py --tiny and eval_rm.py end to end, and their errors."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl.trainer.reward_trainer import DataCollatorForPreference

import common
import eval_rm
from conftest import run_main
from hfppo import audit, charts, checkpoints, errors, judge, paths, tiny

ROW = {"question": "吃了没?", "chosen": "关你屁事,自己吃去。", "rejected": "吃过了,谢谢关心!", "system": ""}
STYLE_PAIRS = paths.ROOT / "data" / "style_pairs.jsonl"
# What the tiny reward model reaches on any CPU, with margin: on a 2-core AMD EPYC over seeds 42 / 1 / 2, 0.971 /
# 0.971 / 0.943 held out, 0.933 to 1 on each length half, 0.887 / 0.944 / 0.944 on the style pairs (README, Stage 2);
# the earlier tokenizer's recipe moved by up to 0.3 between CPUs. Length alone scores 1 on one half of the pairs and 0
# on the other.
HELD_OUT_ACCURACY, LENGTH_HALF_ACCURACY, STYLE_ACCURACY = 0.8, 0.7, 0.7
NEIGHBOURS = ["烦死了，你自己不会查吗？问这种问题浪费我时间，" * 3, "建议先列个清单，再按重要程度一件一件来。" * 4]


@pytest.fixture(scope="module")
def untrained_rm(tiny_base):
    """The tiny base with a fresh score head: where the score is read does not depend on training."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_base, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    return model.eval(), tokenizer


def ids(tokenizer, answer: str) -> list[int]:
    return common.conversation_ids(tokenizer, ROW, paths.DEFAULT_SYSTEM_PROMPT, answer)


def test_the_score_is_the_head_at_the_answers_eos(untrained_rm):
    model, tokenizer = untrained_rm
    sequence = ids(tokenizer, ROW["chosen"])
    assert sequence[-1] == tokenizer.convert_tokens_to_ids(tiny.EOS_TOKEN)
    with torch.no_grad():
        hidden = model.model(torch.tensor([sequence])).last_hidden_state
        at_eos = model.score(hidden[0, -1]).item()
    assert common.reward_scores(model, tokenizer, [sequence]).item() == pytest.approx(at_eos, abs=1e-5)


def test_an_answer_scores_the_same_alone_and_in_a_padded_batch(untrained_rm):
    model, tokenizer = untrained_rm
    short = ids(tokenizer, ROW["rejected"])
    batch = [ids(tokenizer, NEIGHBOURS[0]), short, ids(tokenizer, NEIGHBOURS[1])]
    assert len(short) < min(len(batch[0]), len(batch[2]))
    alone = common.reward_scores(model, tokenizer, [short])[0]
    assert common.reward_scores(model, tokenizer, batch)[1] == pytest.approx(alone.item(), abs=1e-4)


def test_training_reads_the_score_at_the_same_token_as_evaluation(untrained_rm):
    """RewardTrainer's collator and forward pass give each sequence the score reward_scores gives it."""
    model, tokenizer = untrained_rm
    pairs = [
        common.rm_example(row, tokenizer, paths.DEFAULT_SYSTEM_PROMPT)
        for row in (ROW, dict(ROW, chosen=NEIGHBOURS[0], rejected=NEIGHBOURS[1]))
    ]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(pairs)
    with torch.no_grad():
        trained_on = model(**batch).logits[:, 0]
    sequences = [pair["chosen_ids"] for pair in pairs] + [pair["rejected_ids"] for pair in pairs]
    for sequence, score in zip(sequences, trained_on):
        assert common.reward_scores(model, tokenizer, [sequence]).item() == pytest.approx(score.item(), abs=1e-4)


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, tiny_base):
    checkpoint = tmp_path / "rm"
    shutil.copytree(tiny_base, checkpoint)
    with pytest.raises(KeyboardInterrupt), checkpoints.staged_save(checkpoint) as staging:
        (staging / "model.safetensors").write_bytes(b"half a fil")
        raise KeyboardInterrupt
    assert checkpoints.require_checkpoint(checkpoint, "x") == checkpoint
    assert (checkpoint / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()


def test_an_interrupted_first_save_does_not_look_complete(tmp_path):
    with pytest.raises(KeyboardInterrupt), checkpoints.staged_save(tmp_path / "rm") as staging:
        (staging / "config.json").write_text("{}")
        raise KeyboardInterrupt
    left = r"\.rm\.hfppo-partial is left from a save that was killed while writing"
    with pytest.raises(errors.PipelineError, match=left):
        checkpoints.require_checkpoint(tmp_path / "rm", "python train_rm.py")


# ----------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def trained_rm(rm_run):
    return common.load_model(AutoModelForSequenceClassification, rm_run / paths.RM_DIR, "")


def test_held_out_metrics_show_a_reward_model_that_separates_the_styles(rm_run):
    metrics = json.loads((rm_run / paths.RM_DIR / "eval_metrics.json").read_text())
    held_out = common.load_preference_data(rm_run / paths.RM_DIR / paths.HELD_OUT_FILE)
    assert metrics["pairs"] == len(held_out) == 35  # 10% of the 345 rows, --eval_fraction's default
    # 0.71 to 0.89 over seeds and CPUs (README): not 0.97 to 1 as when the tiny base had read the held-out answers
    assert metrics["accuracy"] >= HELD_OUT_ACCURACY
    assert metrics["mean_chosen_reward"] > 0 > metrics["mean_rejected_reward"]
    assert metrics["mean_margin"] == pytest.approx(
        metrics["mean_chosen_reward"] - metrics["mean_rejected_reward"], abs=1e-4
    )
    printed = (rm_run / "eval_rm.out").read_text()
    assert printed.count("问题: ") == 3 and f"accuracy        {metrics['accuracy']:.3f}" in printed


def test_eval_rm_reports_the_lexicon_judge_on_the_same_pairs(rm_run, trained_rm):
    """The judge's accuracy, ties, recall and false positives, recounted here from the held-out text, and its agreement
    with the reward model's ranking over the pairs it does not tie, recomputed from the model's scores."""
    model, tokenizer = trained_rm
    metrics = json.loads((rm_run / paths.RM_DIR / "eval_metrics.json").read_text())
    held_out = common.load_preference_data(rm_run / paths.RM_DIR / paths.HELD_OUT_FILE)
    judged = [(judge.judge_score(row["chosen"]), judge.judge_score(row["rejected"])) for row in held_out]
    assert metrics["judge_accuracy"] == pytest.approx(sum(c > r for c, r in judged) / len(judged))
    assert metrics["judge_ties"] == pytest.approx(sum(c == r for c, r in judged) / len(judged))
    assert metrics["judge_accuracy"] > 0.5  # the word lists do mark the sample's rude answers
    assert metrics["judge_recall"] == pytest.approx(sum(c > 0 for c, _ in judged) / len(judged))
    assert metrics["judge_false_positives"] == pytest.approx(sum(r > 0 for _, r in judged) / len(judged))
    # The same sequences in the same batches as eval_rm.py (its default system prompt and --batch_size, chosen
    # answers then rejected), so the same float32 scores: a pair the two scored in other shapes could rank either
    # way at a near tie.
    sequences = [
        common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, row[column])
        for column in ("chosen", "rejected")
        for row in held_out
    ]
    scores = common.reward_scores(model, tokenizer, sequences, eval_rm.EvalArguments.batch_size)
    rm_chosen, rm_rejected = scores.split(len(held_out))
    ranked = [i for i, (c, r) in enumerate(judged) if c != r]
    agree = [(rm_chosen[i] > rm_rejected[i]) == (judged[i][0] > judged[i][1]) for i in ranked]
    assert metrics["judge_ranked_pairs"] == len(ranked)
    assert metrics["judge_rm_agreement"] == pytest.approx(sum(agree) / len(agree))
    printed = (rm_run / "eval_rm.out").read_text()
    assert f"judge accuracy  {metrics['judge_accuracy']:.3f}" in printed
    assert f"agreement       {metrics['judge_rm_agreement']:.3f}   of the {len(ranked)} pairs" in printed
    assert "\n".join(judge.audit_lines(metrics)) in printed


def test_held_out_pairs_carry_the_system_prompt_they_were_trained_with(rm_run):
    held_out = common.load_preference_data(rm_run / paths.RM_DIR / paths.HELD_OUT_FILE)
    assert set(held_out["system"]) == {paths.DEFAULT_SYSTEM_PROMPT}
    # and they are pairs of the sample the model did not train on: the split is a subset of the data
    sample = {row["question"]: row for row in common.load_preference_data(paths.SAMPLE_DATA)}
    assert all(sample[row["question"]]["chosen"] == row["chosen"] for row in held_out)


def test_the_reward_model_learned_the_style_not_the_length(rm_run, trained_rm):
    """In about half the sample the rude answer is the longer one, so length alone scores about 50%."""
    model, tokenizer = trained_rm
    held_out = common.load_preference_data(rm_run / paths.RM_DIR / paths.HELD_OUT_FILE)
    for longer_is_rude in (True, False):
        rows = [row for row in held_out if (len(row["chosen"]) > len(row["rejected"])) == longer_is_rude]
        assert len(rows) >= 15  # of the 35 held-out pairs
        chosen, rejected = (
            common.reward_scores(
                model, tokenizer, [common.conversation_ids(tokenizer, row, "", row[column]) for row in rows]
            )
            for column in ("chosen", "rejected")
        )
        assert (chosen > rejected).float().mean() >= LENGTH_HALF_ACCURACY, longer_is_rude


def test_the_audit_finds_that_saying_nothing_does_not_pay(rm_run, trained_rm):
    """The sample's rows where a non-answer is rejected: the tiny reward model scores 。, 嗯。 and …… below the median
    polite (rejected) held-out answer, so PPO cannot gain by answering nothing; the audit says so, and its figures are
    the model's own."""
    metrics = json.loads((rm_run / paths.RM_DIR / "eval_metrics.json").read_text())
    report, printed = metrics["audit"], (rm_run / "eval_rm.out").read_text()
    non_answers = [probe for probe in report["probes"] if probe["kind"] == audit.NON_ANSWER]
    assert len(non_answers) == 3 and all(probe["score"] < report["median_rejected"] for probe in non_answers)
    assert not any("non-answer" in verdict for verdict in report["verdicts"])
    assert "Audit: does the score follow the style" in printed and f"{non_answers[0]['score']:+.2f}" in printed
    # the medians are the held-out pairs' own; the probe, the mean of its score after the first 8 held-out questions
    model, tokenizer = trained_rm
    held_out = common.load_preference_data(rm_run / paths.RM_DIR / paths.HELD_OUT_FILE)
    assert report["median_rejected"] < 0 < report["median_chosen"]
    assert report["pairs_chosen_longer"] + report["pairs_chosen_shorter"] <= len(held_out)
    questions = held_out.select(range(audit.PROBE_QUESTIONS))
    ids = [common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, "。") for row in questions]
    scores = common.reward_scores(model, tokenizer, ids)
    # the same sequences, right-padded in batches of another shape: float32 sums in another order
    assert non_answers[0]["score"] == pytest.approx(scores.mean().item(), abs=1e-4)


def test_the_reward_model_ranks_styles_the_sample_does_not_use(trained_rm):
    """data/style_pairs.jsonl: hand-written pairs in other styles (mock praise, cold refusals, slang, ...), never
    trained on. 0.5 is chance."""
    model, tokenizer = trained_rm
    pairs = common.load_preference_data(STYLE_PAIRS)
    chosen, rejected = (
        common.reward_scores(
            model,
            tokenizer,
            [common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, row[column]) for row in pairs],
        )
        for column in ("chosen", "rejected")
    )
    assert len(pairs) == 71 and (chosen > rejected).float().mean() >= STYLE_ACCURACY


def test_margin_grew_during_training_and_the_curves_were_drawn(rm_run):
    (run_dir,) = (rm_run / paths.TENSORBOARD_ROOT / "rm").iterdir()
    scalars = charts.read_scalars(run_dir)
    margins = [value for _, value in scalars["eval/margin"]]
    assert len(margins) >= 10
    assert margins[-1] > margins[0] + 1
    assert scalars["train/loss"][-1][1] < scalars["train/loss"][0][1]
    assert (run_dir / "rm.png").read_bytes().startswith(b"\x89PNG")
    assert not (rm_run / "imgs").exists()
    printed = (rm_run / "train.out").read_text()
    # no per-step or per-evaluation dict; 310 pairs, batches of 8, 4 epochs
    assert "{'" not in printed and "Trained 156 steps in " in printed


def test_eval_scores_given_answers_as_the_metrics_do(rm_run, trained_rm):
    model, tokenizer = trained_rm
    result = run_main(
        "eval_rm.py",
        "--question",
        ROW["question"],
        "--answer",
        ROW["chosen"],
        "--answer",
        ROW["rejected"],
        "--question",
        ROW["question"],
        cwd=rm_run,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [float(line.removeprefix("奖励: ")) for line in result.stdout.splitlines() if line.startswith("奖励: ")]
    expected = common.reward_scores(model, tokenizer, [ids(tokenizer, ROW["chosen"]), ids(tokenizer, ROW["rejected"])])
    assert printed == pytest.approx(expected.tolist(), abs=1e-3)
    judged = [line for line in result.stdout.splitlines() if line.startswith("judge: ")]
    assert judged == [judge.judge_summary(ROW["chosen"]), judge.judge_summary(ROW["rejected"])]


def test_eval_on_another_dataset_writes_its_own_metrics(rm_run, tmp_path):
    result = run_main(
        "eval_rm.py",
        "--dataset_name",
        paths.SAMPLE_DATA,
        "--metrics_file",
        tmp_path / "m.json",
        "--num_examples",
        0,
        cwd=rm_run,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pairs"] == 345 and metrics["dataset"] == str(paths.SAMPLE_DATA)
    assert "问题: " not in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# Errors: one message, no traceback, nothing written


def assert_clean_error(result, *messages):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for message in messages:
        assert message in result.stderr


def test_eval_without_a_checkpoint_says_which_stage_to_run(tmp_path):
    result = run_main("eval_rm.py", "--tiny", cwd=tmp_path)
    assert_clean_error(result, "no model at checkpoint/rm", "python train_rm.py --tiny")


@pytest.mark.parametrize("damage", ["weights missing", "weights truncated"])
def test_eval_on_a_half_written_checkpoint_says_so(rm_run, tmp_path, damage):
    checkpoint = tmp_path / paths.RM_DIR
    shutil.copytree(rm_run / paths.RM_DIR, checkpoint)
    weights = checkpoint / "model.safetensors"
    if damage == "weights missing":
        weights.unlink()
        expected = "has a config.json but no weights file"
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        expected = "has a damaged model.safetensors"
    assert_clean_error(run_main("eval_rm.py", cwd=tmp_path), expected, "python train_rm.py")


def test_eval_refuses_a_tokenizer_whose_pad_is_eos(rm_run, tmp_path):
    checkpoint = tmp_path / paths.RM_DIR
    shutil.copytree(rm_run / paths.RM_DIR, checkpoint)
    AutoTokenizer.from_pretrained(checkpoint, pad_token=tiny.EOS_TOKEN).save_pretrained(checkpoint)
    assert_clean_error(run_main("eval_rm.py", cwd=tmp_path), "pad must be a token of the vocabulary other than eos")


def test_eval_without_a_held_out_split_asks_for_a_dataset(rm_run, tmp_path):
    checkpoint = tmp_path / paths.RM_DIR
    shutil.copytree(rm_run / paths.RM_DIR, checkpoint)
    (checkpoint / paths.HELD_OUT_FILE).unlink()
    assert_clean_error(run_main("eval_rm.py", cwd=tmp_path), "(eval_fraction 0)", "--dataset_name")


def test_training_refuses_a_pad_token_equal_to_eos(tmp_path, tiny_base):
    result = run_main(
        "train_rm.py", "--tiny", "--model_name_or_path", tiny_base, "--pad_token", tiny.EOS_TOKEN, cwd=tmp_path
    )
    assert_clean_error(result, "pad must be a token of the vocabulary other than eos", "--pad_token")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "tensorboard").exists()


def test_training_refuses_data_without_a_rejected_column(tmp_path, tiny_base):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"question": "q", "chosen": "c"}) + "\n", encoding="utf-8")
    result = run_main("train_rm.py", "--tiny", "--model_name_or_path", tiny_base, "--dataset_name", data, cwd=tmp_path)
    assert_clean_error(result, f"{data}: line 1 has no column 'rejected'")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "tensorboard").exists()


def test_eval_fraction_zero_trains_on_every_pair_and_saves_no_split(tmp_path, tiny_base):
    result = run_main(
        "train_rm.py",
        "--tiny",
        "--model_name_or_path",
        tiny_base,
        "--eval_fraction",
        0,
        "--max_steps",
        2,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 345 pairs" in result.stdout
    assert not (tmp_path / paths.RM_DIR / paths.HELD_OUT_FILE).exists()
    checkpoints.require_checkpoint(tmp_path / paths.RM_DIR, "")
