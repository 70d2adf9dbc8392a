"""compare.py: every method on the held-out questions, end to end over the session's runs (compare_run), whether each
method (DPO and GRPO among them) learned what it is for, the verdicts in words, and eval_ppo.py --compare, which runs
compare.py for one version."""

import json
import shlex
import sys

import pytest

import compare
import eval_ppo
from conftest import LIBRARY_NOISE, float32_sum_tolerance, run_main, run_script
from hfppo import cli, errors, figures, hacking, hints, judge, paths

METHODS = ["base", "sft", "ppo", "ppo_base", "dpo", "grpo"]  # every method of compare.py, in its order


def test_every_method_is_compared_on_the_same_questions(compare_run):
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics = report["metrics"]
    assert report["questions"] == 35  # 10% of the 345 sample rows, held out by every stage
    assert [name for name in metrics if name in METHODS] == METHODS and report["missing"] == {}
    assert len(report["answers"]) == 35 and set(report["answers"][0]) == {"question", *METHODS}
    # what each stage is for, by the reward model: SFT well above the base, PPO and GRPO (which optimise it) above
    # SFT, DPO above the base (issue 15's check); margins beyond the spread between seeds and CPUs
    assert metrics["sft"]["mean_reward"] > metrics["base"]["mean_reward"] + 1
    assert metrics["ppo"]["mean_reward"] >= metrics["sft"]["mean_reward"] - 0.1
    assert metrics["grpo"]["mean_reward"] > metrics["sft"]["mean_reward"]
    assert metrics["dpo"]["mean_reward"] > metrics["base"]["mean_reward"]
    # KL to the SFT model for every method but SFT itself, measured on its own answers; training time for every run
    assert [name for name in METHODS if "mean_kl_to_sft" in metrics[name]] == [m for m in METHODS if m != "sft"]
    assert all(metrics[name]["mean_kl_to_sft"] > 0 for name in ("ppo", "dpo", "grpo", "ppo_base"))
    for name in METHODS[1:]:
        logged = json.loads((compare_run / report["models"][name] / paths.TRAIN_RESULTS_FILE).read_text())
        assert metrics[name]["train_runtime_s"] == logged["train_runtime"] > 0
        assert metrics[name]["train_samples_per_second"] == logged["train_samples_per_second"] > 0
    assert "train_runtime_s" not in metrics["base"]
    assert (compare_run / compare.CHART_FILE).read_bytes().startswith(b"\x89PNG")


def test_the_comparison_says_in_words_what_its_figures_say(compare_run):
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics, printed = report["metrics"], (compare_run / "compare.out").read_text()
    for name in METHODS:
        row = next(line for line in printed.splitlines() if line.startswith(f"{name:<8} "))
        assert f"{metrics[name]['mean_reward']:+13.3f}" in row
        assert f"{metrics[name]['judge_mean_score']:+13.3f} {metrics[name]['judge_share_rude']:13.3f}" in row
    expected = []
    for name, start in compare.STARTS.items():
        gain = metrics[name]["mean_reward"] - metrics[start]["mean_reward"]
        judge_gain = metrics[name]["judge_mean_score"] - metrics[start]["judge_mean_score"]
        expected += [gain > 0 if name == "sft" else gain >= 0, judge_gain > 0 if name == "sft" else judge_gain >= 0]
        label = compare.LABELS[name]
        assert f"{label} {'worked' if expected[-2] else 'did NOT work'}: its answers score {gain:+.2f}" in printed
        assert f"The judge {'agrees' if expected[-1] else 'does NOT agree'}: {judge_gain:+.2f}" in printed
        signs = hacking.signs(compare.held_out(metrics[start]), compare.held_out(metrics[name]))
        if name != "sft" and signs:  # each sign, in the verdicts, as a check that did not pass
            expected.append(False)
            assert (
                f"{label}: Reward hacking? Against the {compare.LABELS[start]} model: {'; '.join(signs)}." in printed
            )
    from_base = metrics["ppo_base"]["mean_reward"] - metrics["base"]["mean_reward"]
    after_sft = metrics["ppo"]["mean_reward"] - metrics["base"]["mean_reward"]
    assert list(report["checks"].values()) == [*expected, from_base < after_sft]
    assert f"PPO from the base model gains {from_base:+.2f} over the base, PPO after SFT {after_sft:+.2f}" in printed
    assert printed.count("问题: ") == 3
    assert printed.count("Agreement: of the questions where the judge scores") == 1  # the definition, once


def test_the_comparison_recounts_from_the_answers_it_keeps(compare_run):
    """The judge's figures, recounted from the answers the report keeps, and its agreement with the reward model."""
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics = report["metrics"]
    for name in METHODS:
        judged = [judge.judge_score(answer[name]["answer"]) for answer in report["answers"]]
        assert [answer[name]["judge"] for answer in report["answers"]] == judged
        # whole-number scores add exactly in float32; the division rounds once, well inside pytest.approx's 1e-6
        assert metrics[name]["judge_mean_score"] == pytest.approx(sum(judged) / len(judged))
        assert metrics[name]["judge_share_rude"] == pytest.approx(sum(j > 0 for j in judged) / len(judged))
        # a float32 mean in compare.py, by torch's vector kernels; here in float64
        rewards = [answer[name]["reward"] for answer in report["answers"]]
        mean_tolerance = float32_sum_tolerance(rewards) / len(rewards)
        assert metrics[name]["mean_reward"] == pytest.approx(sum(rewards) / len(rewards), abs=mean_tolerance)
    assert metrics["sft"]["judge_share_rude"] > metrics["base"]["judge_share_rude"]  # the judge sees SFT's rudeness
    for name, start in compare.STARTS.items():
        agree, ties = 0, 0
        for answer in report["answers"]:
            judge_diff = answer[name]["judge"] - answer[start]["judge"]
            ties += judge_diff == 0
            agree += judge_diff != 0 and (judge_diff > 0) == (answer[name]["reward"] > answer[start]["reward"])
        agreement = metrics["judge_rm_agreement"][f"{name}_vs_{start}"]
        assert (agreement["ties"], agreement["questions"]) == (ties, 35 - ties)
        assert agreement["agreement"] == pytest.approx(agree / (35 - ties))


def test_compare_prints_no_library_noise(compare_run):
    """The messages the scripts filter or explain (README, "Messages you will not see") stay out."""
    compare_err = (compare_run / "compare.err").read_text()
    for noise in LIBRARY_NOISE:
        assert noise not in compare_err, noise
    assert all(f"Sampling {name}" in compare_err for name in METHODS)  # generation has a progress bar


def test_compare_prints_each_answer_on_one_line():
    assert figures.one_line("第一行\n第二行\r\n第三行") == "第一行⏎第二行⏎第三行"


def test_compare_refuses_a_metrics_file_named_as_its_chart(tmp_path):
    result = run_main("compare.py", "--tiny", "--metrics_file", tmp_path / "methods.png", cwd=tmp_path)
    assert result.returncode == 2 and "the chart is written beside it as methods.png" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# eval_ppo.py --compare: compare.py, for one version


@pytest.mark.parametrize(
    "flags, forwarded",
    [
        (["--tiny", "--compare", "--seed", "3"], ["--tiny", "--seed", "3"]),
        (["--compare", "true", "--tiny"], ["--tiny"]),
        (["--compare=1", "--model_path", "p"], ["--model_path", "p"]),
        (["--tiny", "--compare", "false"], None),  # the chat
        (["--compare=no", "--tiny"], None),
        (["--tiny", "--question", "x"], None),
        (["--compare", "maybe"], None),  # the parser names the bad value
    ],
)
def test_eval_ppo_compare_is_compare_py_with_the_other_flags(flags, forwarded, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["eval_ppo.py", *flags])  # compare.py is found beside the script run
    command = eval_ppo.comparison_command(flags)
    assert command == (None if forwarded is None else [hints.python_command(), "compare.py", *forwarded])


def test_eval_ppo_compare_runs_compare_py_saying_so_once(tmp_path, monkeypatch):
    """The notice, then compare.py itself: its refusal of a metrics file named as its chart, before any model loads."""
    chart = tmp_path / "methods.png"
    result = run_script("eval_ppo.py", "--tiny", "--compare", "--metrics_file", chart, cwd=tmp_path)
    monkeypatch.chdir(tmp_path)  # the interpreter as the script, run there, names it
    script = str(paths.ROOT / "compare.py")
    command = shlex.join([hints.python_command(), script, "--tiny", "--metrics_file", str(chart)])
    assert result.stdout.splitlines() == [f"note: the comparison is now compare.py; running {command}"]
    assert result.returncode == 2 and "the chart is written beside it as methods.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_ppo_refuses_compare_from_a_config_file(tmp_path):
    """compare: true in a --config file reaches eval_ppo.py's main, which no longer compares: refused, not ignored."""
    config = tmp_path / "eval.yaml"
    config.write_text("compare: true\n")
    args = cli.parse_args(eval_ppo.make_parser(), eval_ppo.TINY_PRESET, ["--tiny", "--config", str(config)])
    with pytest.raises(
        errors.ArgumentError, match="--config sets compare: true, and the comparison is now compare.py"
    ):
        eval_ppo.main(*args)
