"""End to end: train_sft.py --tiny in a fresh folder, then eval_sft.py on what it wrote."""

from transformers import AutoModelForCausalLM, AutoTokenizer

import common
from conftest import answer_log_likelihood, run_main
from hfppo import charts, paths, tiny


def test_checkpoint_loads_with_its_tokenizer(sft_run):
    model = AutoModelForCausalLM.from_pretrained(sft_run / paths.SFT_DIR)
    tokenizer = AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == tiny.EOS_TOKEN


def test_training_loss_fell_and_the_curves_were_drawn_beside_the_run(sft_run):
    (run_dir,) = (sft_run / paths.TENSORBOARD_ROOT / "sft").iterdir()
    losses = [value for _, value in charts.read_scalars(run_dir)["train/loss"]]
    assert len(losses) > 10
    assert losses[-1] < losses[0]
    assert (run_dir / "sft.png").read_bytes().startswith(b"\x89PNG")
    assert not (sft_run / "imgs").exists()  # the README's charts are not a run's output
    assert f"curves in {(run_dir / 'sft.png').relative_to(sft_run)}" in (sft_run / "train.out").read_text()


def test_stdout_has_a_summary_line_and_no_per_step_dict(sft_run):
    printed = (sft_run / "train.out").read_text()
    assert "{'" not in printed, printed[:2000]  # the Trainer's per-step logs go to TensorBoard only
    assert "Trained 120 steps in " in printed  # 155 rows (half of the 310 not held out), batches of 8, 6 epochs


def test_sft_learned_the_chosen_style_on_held_out_questions(sft_run, tiny_base):
    held_out = common.load_preference_data(sft_run / paths.SFT_DIR / paths.HELD_OUT_FILE)  # no stage trained on
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    sft = AutoModelForCausalLM.from_pretrained(sft_run / paths.SFT_DIR).eval()
    before, after = (
        {column: answer_log_likelihood(model, tokenizer, held_out, column) for column in ("chosen", "rejected")}
        for model in (base, sft)
    )
    # On the rows no stage trained on, probability moved from the polite answers to the rude ones, per token: the
    # rude answers rose, the polite ones fell, and the rude ones are now the likelier (measured on a 2-core AMD EPYC,
    # seed 42: rude -6.12 -> -5.61, polite -6.12 -> -6.54 nats; the base has not read these polite answers, so its
    # own gap is small; it reads short polite answers and non-answers too since the sample has them, data/README.md).
    assert after["chosen"] > before["chosen"], (before, after)
    assert after["rejected"] < before["rejected"] - 0.25, (before, after)
    assert after["chosen"] - after["rejected"] > max(0, before["chosen"] - before["rejected"] + 0.8), (before, after)


def test_eval_answers_a_question(sft_run):
    result = run_main("eval_sft.py", "--tiny", "--question", "吃了没?", cwd=sft_run)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["输入问题:吃了没?", "---模型输出---"]
    assert lines[2].strip()


def test_eval_reads_questions_from_stdin(sft_run):
    result = run_main("eval_sft.py", "--tiny", "--do_sample", "false", cwd=sft_run, stdin="你是谁?\n\n推荐一本书\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("---模型输出---") == 2
    assert "输入问题:推荐一本书" in result.stdout


def test_eval_without_a_checkpoint_says_which_stage_to_run(tmp_path):
    result = run_main("eval_sft.py", "--tiny", "--question", "x", cwd=tmp_path)
    assert result.returncode == 1
    assert "no model at checkpoint/sft" in result.stderr
    assert "python train_sft.py --tiny" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_data_stops_sft_before_anything_is_written(tmp_path, tiny_base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "chosen": "b", "rejected": "c"}\n{"question": "a"\n', encoding="utf-8")
    result = run_main("train_sft.py", "--tiny", "--model_name_or_path", tiny_base, "--dataset_name", bad, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{bad}: line 2 is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "tensorboard").exists()


def test_training_prints_progress_not_a_bar_per_data_pass(sft_run, rm_run):
    """datasets' map/filter bars (TRL's tokenize, truncate, drop-masked passes: under a second each on this data) and
    the Trainer's second bar for each evaluation (terminal escape codes in a log) are off; the training bar stays."""
    for workdir in (sft_run, rm_run):
        err = (workdir / "train.err").read_text()
        for noise in (
            "Tokenizing train dataset",
            "Truncating train dataset",
            "Map",
            "Creating json from Arrow",
            "\x1b[",
        ):
            assert noise not in err, (workdir.name, noise)
        assert "it/s" in err or "s/it" in err  # the training loop's own bar
