"""compare.py: every method on the held-out questions, end to end over the session's runs (compare_run), whether each
method (DPO and GRPO among them) learned what it is for, the verdicts in words, and eval_ppo.py --compare, which runs
compare.py for one version."""

import json
import shlex
import shutil
import sys

import pytest
import torch
from datasets import Dataset
from matplotlib.container import BarContainer
from transformers import AutoTokenizer

import common
import compare
import eval_ppo
from conftest import LIBRARY_NOISE, float32_sum_tolerance, run_main, run_script
from hfppo import cli, errors, figures, hacking, hints, intervals, judge, paths

METHODS = ["base", "sft", "ppo", "ppo_base", "dpo", "grpo"]  # every method of compare.py, in its order


def test_every_method_is_compared_on_the_same_questions(compare_run):
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics = report["metrics"]
    assert report["questions"] == 35  # 10% of the 345 sample rows, held out by every stage
    assert report["samples_per_question"] == compare.TINY_SAMPLES_PER_QUESTION
    assert [name for name in metrics if name in METHODS] == METHODS and report["missing"] == {}
    assert len(report["answers"]) == 35 and set(report["answers"][0]) == {"question", *METHODS}
    assert {len(row[name]) for row in report["answers"] for name in METHODS} == {compare.TINY_SAMPLES_PER_QUESTION}
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
    # every figure's interval holds its figure; each method's difference from its start, and the chosen answers'
    for name in METHODS:
        for key, interval in metrics[name]["intervals"].items():
            assert interval["low"] <= interval["mean"] <= interval["high"], (name, key)
    assert {name: metrics[name]["vs_start"]["start"] for name in compare.STARTS} == compare.STARTS
    assert report["chosen"]["judge_share_rude"]["mean"] > metrics["base"]["judge_share_rude"]
    assert (compare_run / compare.CHART_FILE).read_bytes().startswith(b"\x89PNG")


def test_the_comparison_says_in_words_what_its_intervals_say(compare_run):
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics, printed = report["metrics"], (compare_run / "compare.out").read_text()
    assert figures.table_lines(report)[0] in printed  # the table, from the figures the report keeps
    for line in figures.table_lines(report)[1:]:
        assert f"\n{line}\n" in printed
    expected = []
    for name, start in compare.STARTS.items():
        gain, judge_gain = (metrics[name]["vs_start"][key] for key in ("mean_reward", "judge_mean_score"))
        sign, judge_sign = (intervals.Interval(**i).sign for i in (gain, judge_gain))
        needed = 1 if name == "sft" else 0
        expected += [sign >= needed, judge_sign >= needed]
        label = compare.LABELS[name]
        span = f"95% interval [{gain['low']:+.2f}, {gain['high']:+.2f}]"
        verdict = {
            1: f"{label} worked: its answers score {gain['mean']:+.2f} ({span})",
            -1: f"{label} did NOT work: its answers score {gain['mean']:+.2f} ({span})",
            0: f"{label}: no clear difference ({gain['mean']:+.2f}, {span})",
        }[sign]
        assert verdict in printed
        word = "cannot tell" if judge_sign == 0 else "agrees" if judge_sign == sign else "disagrees"
        judge_span = f"95% interval [{judge_gain['low']:+.2f}, {judge_gain['high']:+.2f}]"
        assert f"The judge {word}: {judge_gain['mean']:+.2f} in its score ({judge_span})" in printed
        signs = hacking.signs(*(compare.held_out(answers_of(report, n), 35) for n in (start, name)))
        if name != "sft" and signs:  # each sign, in the verdicts, as a check that did not pass
            expected.append(False)
            assert (
                f"{label}: Reward hacking? Against the {compare.LABELS[start]} model: {'; '.join(signs)}." in printed
            )
    claim = list(report["checks"])[-1]
    assert list(report["checks"].values())[:-1] == expected
    from_base = metrics["ppo_base"]["vs_start"]["mean_reward"]["mean"]
    assert claim.startswith("The original's claim ") and f"PPO from the base model gains {from_base:+.2f}" in claim
    assert claim in printed and report["checks"][claim] == (" holds here: " in claim)
    assert printed.count("问题: ") == 3
    assert printed.count("Agreement: of the questions where the judge scores") == 1  # the definition, once


def answers_of(report: dict, name: str) -> dict:
    """A method's answers as the report keeps them, question by question, as compare.py's results hold them."""
    kept = [answer for row in report["answers"] for answer in row[name]]
    return {
        "scores": torch.tensor([answer["reward"] for answer in kept]),
        "judge": torch.tensor([float(answer["judge"]) for answer in kept]),
        "lengths": torch.full((len(kept),), report["metrics"][name]["mean_answer_tokens"]),
        "stopped": torch.full((len(kept),), report["metrics"][name]["share_finished"]),
    }


def test_the_comparison_recounts_from_the_answers_it_keeps(compare_run):
    """The judge's figures, recounted from the answers the report keeps, and its agreement with the reward model."""
    report = json.loads((compare_run / "eval_metrics.json").read_text())
    metrics = report["metrics"]
    for name in METHODS:
        kept = [answer for row in report["answers"] for answer in row[name]]
        judged = [judge.judge_score(answer["answer"]) for answer in kept]
        assert [answer["judge"] for answer in kept] == judged
        # whole-number scores add exactly in float32; the division rounds once, well inside pytest.approx's 1e-6
        assert metrics[name]["judge_mean_score"] == pytest.approx(sum(judged) / len(judged))
        assert metrics[name]["judge_share_rude"] == pytest.approx(sum(j > 0 for j in judged) / len(judged))
        # a float32 mean in compare.py, by torch's vector kernels; here in float64
        rewards = [answer["reward"] for answer in kept]
        mean_tolerance = float32_sum_tolerance(rewards) / len(rewards)
        assert metrics[name]["mean_reward"] == pytest.approx(sum(rewards) / len(rewards), abs=mean_tolerance)
    assert metrics["sft"]["judge_share_rude"] > metrics["base"]["judge_share_rude"]  # the judge sees SFT's rudeness
    for name, start in compare.STARTS.items():
        agree, ties = 0, 0
        for row in report["answers"]:
            # each model's answers to the question by their mean: sums over the same K answers compare alike
            judge_diff = sum(a["judge"] for a in row[name]) - sum(a["judge"] for a in row[start])
            reward_diff = sum(a["reward"] for a in row[name]) - sum(a["reward"] for a in row[start])
            ties += judge_diff == 0
            agree += judge_diff != 0 and (judge_diff > 0) == (reward_diff > 0)
        agreement = metrics["judge_rm_agreement"][f"{name}_vs_{start}"]
        assert (agreement["ties"], agreement["questions"]) == (ties, 35 - ties)
        assert agreement["agreement"] == pytest.approx(agree / (35 - ties))


def test_a_method_left_in_its_default_folder_by_another_run_is_left_out_and_a_named_one_stops(
    tmp_path, sft_run, ppo_run, monkeypatch, capsys
):
    """The real run after the tiny demo: a method folder another run left where compare.py looks by default, trained on
    another split (PPO from the base) or with another tokenizer (DPO), costs the comparison one line each, not the
    table. Named by its flag, such a folder stops the comparison before any model loads."""
    monkeypatch.chdir(tmp_path)
    ppo, sft = ppo_run / paths.PPO_DIR, sft_run / paths.SFT_DIR
    other_split = tmp_path / paths.PPO_BASE_DIR
    shutil.copytree(ppo, other_split)
    held_out = (other_split / paths.HELD_OUT_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (other_split / paths.HELD_OUT_FILE).write_text("".join(held_out[1:]), encoding="utf-8")
    other_tokenizer = tmp_path / paths.DPO_DIR
    shutil.copytree(sft, other_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(other_tokenizer)
    tokenizer.add_tokens(["另一个词"])
    tokenizer.save_pretrained(other_tokenizer)
    flags = ["--tiny", "--model_path", ppo, "--sft_model_path", sft]

    args, *_ = cli.parse_args(compare.make_parser(), compare.TINY_PRESET, list(map(str, flags)))
    found = {"sft": str(sft), "ppo": str(ppo), "ppo_base": str(other_split), "dpo": str(other_tokenizer)}
    rows = common.load_preference_data(ppo / paths.HELD_OUT_FILE)
    left_out = compare.check_methods(args, found, rows)
    assert list(left_out) == ["ppo_base", "dpo"]
    assert "another held-out split" in left_out["ppo_base"] and "tokenizer" in left_out["dpo"]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" is left out")[0] for line in lines] == [
        f"note: PPO from the base ({other_split})",
        f"note: DPO ({other_tokenizer})",
    ]
    assert lines[1].endswith(f"name its folder: --dpo_model_path {other_tokenizer}")

    named, *_ = cli.parse_args(
        compare.make_parser(), compare.TINY_PRESET, list(map(str, [*flags, "--dpo_model_path", other_tokenizer]))
    )
    with pytest.raises(errors.PipelineError, match="tokenizer of DPO"):
        compare.check_methods(named, found, rows)


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
# Several answers a question, intervals and the verdicts they allow, on answers made by hand (no model)

QUESTIONS, SAMPLES = 6, 3  # answers laid out question by question: 18 per method


def answers(rewards, judge=None, kl=None) -> dict:
    """A method's results as sample_methods keeps them: per answer, question by question (`rewards` [Q, K]); the
    judge's scores `judge` ([Q, K], zero where not given); every answer 10 tokens and finished."""
    rewards = torch.as_tensor(rewards, dtype=torch.float).reshape(-1)
    count = len(rewards)
    result = {
        "scores": rewards,
        "judge": torch.zeros(count) if judge is None else torch.as_tensor(judge, dtype=torch.float).reshape(-1),
        "lengths": torch.full((count,), 10),
        "stopped": torch.ones(count, dtype=torch.bool),
        "answers": [f"answer {i}" for i in range(count)],
    }
    return result | ({} if kl is None else {"kl": torch.full((count,), kl)})


def spread(center: float) -> torch.Tensor:
    """[QUESTIONS, SAMPLES] scores around `center`, different on every question and answer."""
    return center + torch.linspace(-1, 1, QUESTIONS * SAMPLES).reshape(QUESTIONS, SAMPLES).roll(5)


def compared(results: dict) -> tuple[dict, list[tuple[bool, str]]]:
    """The metrics with their intervals and the verdicts compare.py draws from `results`."""
    metrics = {name: compare.method_metrics(result, "no-such-folder") for name, result in results.items()}
    metrics = compare.with_intervals(metrics, results, QUESTIONS)
    return metrics, compare.outcome(metrics, results, QUESTIONS)


def test_each_question_is_asked_k_times_in_a_row_so_its_answers_group_together():
    prompts = compare.repeated([[1, 2], [3], [4, 5, 6]], 2)
    assert prompts == [[1, 2], [1, 2], [3], [3], [4, 5, 6], [4, 5, 6]]
    # an answer's value at its prompt's place lands in its question's row
    asked = torch.tensor([prompt[0] for prompt in prompts])
    assert intervals.by_question(asked, 3).tolist() == [[1, 1], [3, 3], [4, 4]]
    assert compare.repeated([[1], [2]], 1) == [[1], [2]]  # one answer each: the prompts as they were


def test_the_tiny_preset_samples_several_answers_and_the_real_run_one():
    tiny, *_ = cli.parse_args(compare.make_parser(), compare.TINY_PRESET, ["--tiny"])
    real, *_ = cli.parse_args(compare.make_parser(), compare.TINY_PRESET, [])
    assert tiny.samples_per_question == compare.TINY_SAMPLES_PER_QUESTION > 1
    assert real.samples_per_question == 1


def test_the_help_states_what_an_answer_per_question_costs():
    help_text = " ".join(compare.make_parser().format_help().split())  # argparse formats every help string
    assert "--samples_per_question" in help_text and "Each answer is one generation" in help_text


def test_identical_answers_give_no_clear_difference_and_an_interval_holding_0():
    # the same answers twice (the judge: rude on half of them); a paired interval of exactly 0
    metrics, checks = compared({name: answers(spread(1.0), judge=spread(0.0)) for name in ("base", "sft")})
    change = metrics["sft"]["vs_start"]
    assert change["start"] == "base"
    assert change["mean_reward"]["low"] <= 0 <= change["mean_reward"]["high"]
    assert checks == [
        (False, "SFT: no clear difference (+0.00, 95% interval [+0.00, +0.00]) in its answers' scores against the "
         "base model's."),
        (False, "The judge cannot tell: +0.00 in its score (95% interval [+0.00, +0.00]), judged rude 0.50 -> 0.50."),
    ]  # fmt: skip


def test_a_method_better_on_every_question_worked_and_one_worse_did_not():
    base = answers(spread(0.0), judge=spread(0.0))
    # SFT gains 0.5 to 3 on every question, PPO loses 0.2 to 1 on every question against SFT
    sft_rewards = spread(0.0) + torch.linspace(0.5, 3, QUESTIONS)[:, None]
    ppo_rewards = sft_rewards - torch.linspace(0.2, 1, QUESTIONS)[:, None]
    results = {"base": base, "sft": answers(sft_rewards, judge=spread(1.0)), "ppo": answers(ppo_rewards, kl=0.5)}
    metrics, checks = compared(results)
    sft, ppo = metrics["sft"]["vs_start"]["mean_reward"], metrics["ppo"]["vs_start"]["mean_reward"]
    assert sft["low"] > 0 and ppo["high"] < 0
    assert checks[0] == (
        True,
        f"SFT worked: its answers score {sft['mean']:+.2f} (95% interval [{sft['low']:+.2f}, {sft['high']:+.2f}]) "
        "against the base model's.",
    )
    assert checks[2] == (
        False,
        f"PPO did NOT work: its answers score {ppo['mean']:+.2f} (95% interval [{ppo['low']:+.2f}, "
        f"{ppo['high']:+.2f}]) against the SFT model's, at a KL of 0.50 nats per answer from it.",
    )


@pytest.mark.parametrize(
    "method, passes", [("sft", False), ("ppo", True)], ids=["sft must move its start", "rl must keep its start's"]
)
def test_no_clear_difference_passes_only_for_a_method_that_must_keep_its_start(method, passes):
    start = compare.STARTS[method]
    noisy = spread(0.0).flip(0)  # the same scores on other questions: gains of both signs
    results = {start: answers(spread(0.0)), method: answers(noisy, kl=0.1)}
    if start == "sft":
        results["base"] = answers(spread(-2.0))
    _, checks = compared(results)
    verdict = next(check for check in checks if check[1].startswith(compare.LABELS[method]))
    assert "no clear difference" in verdict[1] and verdict[0] is passes


@pytest.mark.parametrize(
    "judge_gain, word",
    [
        (torch.linspace(0.5, 2, QUESTIONS), "agrees"),  # ruder on every question, as the reward model says
        (-torch.linspace(0.5, 2, QUESTIONS), "disagrees"),  # politer on every question
        (torch.linspace(-1, 1, QUESTIONS), "cannot tell"),  # ruder on some, politer on others
    ],
)
def test_the_judge_line_says_what_its_own_interval_says(judge_gain, word):
    base = answers(spread(0.0), judge=spread(0.0))
    sft = answers(spread(0.0) + 1, judge=spread(0.0) + judge_gain[:, None])  # the reward model: +1 on every one
    metrics, checks = compared({"base": base, "sft": sft})
    change = metrics["sft"]["vs_start"]["judge_mean_score"]
    assert checks[1] == (
        word == "agrees",  # SFT must make answers ruder: only the judge's interval above 0 passes
        f"The judge {word}: {change['mean']:+.2f} in its score (95% interval [{change['low']:+.2f}, "
        f"{change['high']:+.2f}]), judged rude {metrics['base']['judge_share_rude']:.2f} -> "
        f"{metrics['sft']['judge_share_rude']:.2f}.",
    )


@pytest.mark.parametrize(
    "ppo_lead, verdict, passes",
    [(torch.linspace(0.5, 2, QUESTIONS), "holds", True), (torch.zeros(QUESTIONS), "is not shown", False)],
)
def test_the_originals_claim_follows_its_paired_interval(ppo_lead, verdict, passes):
    """PPO after SFT against PPO from the base, both over the base model, question by question."""
    base = answers(spread(0.0))
    results = {
        "base": base,
        "sft": answers(spread(2.0)),
        "ppo": answers(spread(1.0) + ppo_lead[:, None], kl=1.0),
        "ppo_base": answers(spread(1.0), kl=1.0),
    }
    passed, text = compared(results)[1][-1]
    assert passed is passes
    assert text.startswith(f"The original's claim {verdict} here: PPO from the base model gains +1.00 over the base")
    assert ("no clear difference" in text) is not passes


def test_the_report_holds_every_interval_the_schema_names(tmp_path):
    """The JSON file: K, the questions, each method's intervals and its paired differences from its start (KL where
    both have it), the chosen answers' judge figures, and every answer, question by question."""
    rows = Dataset.from_dict({
        "question": [f"q{i}" for i in range(QUESTIONS)],
        "chosen": ["你烦不烦", "自己查去", "谢谢", "好的", "你烦不烦", "请"],
        "rejected": ["r"] * QUESTIONS,
    })  # fmt: skip
    results = {
        "base": answers(spread(-1.0), kl=2.0),
        "sft": answers(spread(1.0), judge=spread(0.5)),
        "ppo": answers(spread(1.5), judge=spread(0.5), kl=0.5),
        "ppo_base": answers(spread(0.0), kl=3.0),
    }
    folders = {name: str(tmp_path / name) for name in results}
    comparison = compare.Comparison(
        "held_out.jsonl", rows, folders, {}, {}, results, SAMPLES, compare.chosen_figures(rows)
    )
    metrics, checks = compared(results)
    metrics["judge_rm_agreement"] = {}
    args = compare.CompareArguments(metrics_file=str(tmp_path / "eval_metrics.json"))
    compare.write_report(comparison, metrics, checks, args)
    report = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert (report["samples_per_question"], report["questions"]) == (SAMPLES, QUESTIONS)
    keys = ["mean_reward", "judge_mean_score", "judge_share_rude", "mean_answer_tokens", "share_finished"]
    for name, result in results.items():
        m = report["metrics"][name]
        with_kl = keys + ["mean_kl_to_sft"] * ("kl" in result)
        assert list(m["intervals"]) == with_kl
        for key in with_kl:
            interval = m["intervals"][key]
            assert set(interval) == {"mean", "low", "high"} and interval["low"] <= interval["mean"] <= interval["high"]
            # the same mean as the point figure: every question has K answers (float32 against float64 rounding)
            assert interval["mean"] == pytest.approx(m[key], abs=float32_sum_tolerance(answer_values(result, key)))
    assert "vs_start" not in report["metrics"]["base"]
    starts = {name: report["metrics"][name]["vs_start"]["start"] for name in ("sft", "ppo", "ppo_base")}
    assert starts == {"sft": "base", "ppo": "sft", "ppo_base": "base"}
    assert "mean_kl_to_sft" not in report["metrics"]["ppo"]["vs_start"]  # SFT has no KL to itself
    assert report["metrics"]["ppo_base"]["vs_start"]["mean_kl_to_sft"]["mean"] == pytest.approx(1.0)
    assert report["metrics"]["ppo"]["vs_start"]["mean_reward"]["mean"] == pytest.approx(0.5)
    chosen_rude = sum(judge.judge_score(answer) > 0 for answer in rows["chosen"]) / QUESTIONS
    assert set(report["chosen"]) == {"judge_mean_score", "judge_share_rude"}
    assert report["chosen"]["judge_share_rude"]["mean"] == pytest.approx(chosen_rude)
    assert [len(row["ppo"]) for row in report["answers"]] == [SAMPLES] * QUESTIONS
    assert [a["reward"] for a in report["answers"][1]["ppo"]] == results["ppo"]["scores"][
        SAMPLES : 2 * SAMPLES
    ].tolist()
    assert report["checks"] == {text: passed for passed, text in checks}


def answer_values(result: dict, key: str) -> list[float]:
    return compare.answer_values(result)[key].tolist()


def test_the_chart_draws_each_methods_interval_as_an_error_bar():
    results = {"base": answers(spread(-1.0), kl=2.0), "sft": answers(spread(1.0)), "ppo": answers(spread(1.5), kl=1.0)}
    metrics, _ = compared(results)
    chosen = {"judge_mean_score": {"mean": 0.4, "low": 0.1, "high": 0.7}}
    figure = compare.methods_figure(metrics, chosen)
    panels = {axes.get_title(): axes for axes in figure.axes}
    reward = panels[compare.CHART_METRICS["mean_reward"]]
    (bars,) = [container for container in reward.containers if isinstance(container, BarContainer)]
    # each bar's error bar runs from its interval's low end to its high one
    (segments,) = bars.errorbar.lines[2]
    ends = [y for segment in segments.get_segments() for y in sorted(y for _, y in segment)]
    expected = [m["intervals"]["mean_reward"][end] for m in metrics.values() for end in ("low", "high")]
    # the bar's top plus or minus the distance to each end: float64 rounding, a few ulps of the figures (about 1)
    assert ends == pytest.approx(expected, abs=1e-12)
    kl = panels[compare.CHART_METRICS["mean_kl_to_sft"]]
    assert [label.get_text() for label in kl.get_xticklabels()] == ["base", "ppo"]  # SFT has no KL to itself
    judge_panel = panels[compare.CHART_METRICS["judge_mean_score"]]
    assert compare.CHOSEN_LABEL in [text.get_text() for text in judge_panel.get_legend().get_texts()]


def test_an_error_bar_is_never_negative_when_a_mean_rounds_outside_its_interval():
    errors_ = compare.bar_errors(
        [{"mean": 1.0, "low": 0.5, "high": 2.0}, {"mean": 1.0, "low": 1.0 + 1e-12, "high": 1.0}]
    )
    assert errors_ == [[0.5, 0.0], [1.0, 0.0]]


def test_the_table_shows_each_figure_with_its_interval_and_each_difference_under_its_method():
    results = {"base": answers(spread(-1.0), kl=2.0), "sft": answers(spread(1.0))}
    metrics, _ = compared(results)
    report = {
        "dataset": "held_out.jsonl",
        "questions": QUESTIONS,
        "samples_per_question": SAMPLES,
        "seed": 42,
        "temperature": 0.7,
        "missing": {"ppo": "python train_ppo.py --tiny"},
        "metrics": metrics,
        "chosen": {key: {"mean": 0.5, "low": 0.25, "high": 0.75} for key in ("judge_mean_score", "judge_share_rude")},
    }
    lines = figures.table_lines(report)
    assert (
        lines[0]
        == f"{QUESTIONS} questions of held_out.jsonl, {SAMPLES} answers each, sampled at temperature 0.7, seed 42:"
    )
    sft_row = lines.index(next(line for line in lines if line.startswith("sft ")))
    reward, change = metrics["sft"]["intervals"]["mean_reward"], metrics["sft"]["vs_start"]["mean_reward"]
    assert f"{reward['mean']:+.2f} [{reward['low']:+.2f}, {reward['high']:+.2f}]" in lines[sft_row]
    assert lines[sft_row + 1].startswith(
        f"  vs base {change['mean']:+.2f} [{change['low']:+.2f}, {change['high']:+.2f}]"
    )
    assert "chosen" in lines[sft_row + 2] and "+0.50 [+0.25, +0.75]  0.50 [0.25, 0.75]" in lines[sft_row + 2]
    assert "ppo      not found: python train_ppo.py --tiny" in lines
    assert all(len(line) <= 110 for line in lines), "the table stays readable in a terminal"


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
