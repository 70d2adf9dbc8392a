"""make seeds' aggregation (hfppo/seeds.py) on synthetic comparison reports of the schema compare.py writes: every
figure's mean and sample sd across seeds, each seed's paired intervals, a method a seed lacks, a report missing,
damaged or without intervals, and the table docs/results.md quotes (hfppo/figures.py's "seeds" block)."""

import json
import re
import shutil
import subprocess

import pytest

from hfppo import errors, figures, paths, seeds

# Point figures of each method at seed "a", before the per-seed offset of `comparison_report`.
FIGURES = {
    "base": {"mean_reward": -1.0, "judge_mean_score": -0.5, "judge_share_rude": 0.0, "mean_answer_tokens": 12.0,
             "share_finished": 1.0, "mean_kl_to_sft": 15.0},
    "sft": {"mean_reward": 2.0, "judge_mean_score": 0.0, "judge_share_rude": 0.0625, "mean_answer_tokens": 15.0,
            "share_finished": 1.0},
    "ppo": {"mean_reward": 2.5, "judge_mean_score": 0.25, "judge_share_rude": 0.125, "mean_answer_tokens": 14.0,
            "share_finished": 1.0, "mean_kl_to_sft": 3.0},
}  # fmt: skip
HALF_WIDTH = 0.25  # each synthetic interval's low and high: its mean less and plus this


def interval(mean: float) -> dict:
    return {"mean": mean, "low": mean - HALF_WIDTH, "high": mean + HALF_WIDTH}


def comparison_report(offset: float, methods=tuple(FIGURES), with_intervals: bool = True) -> dict:
    """A comparison report as compare.py writes it (brief36's schema): each method's figures moved by `offset`, with
    an interval of half-width HALF_WIDTH on every figure and on its difference from its start."""
    metrics = {}
    for name in methods:
        m = {key: value + offset for key, value in FIGURES[name].items()}
        m["share_reward_positive"] = 0.5
        start = paths.METHODS[name].start
        if with_intervals:
            m["intervals"] = {key: interval(value) for key, value in m.items() if key in seeds.KEYS}
            if start in methods:
                m["vs_start"] = {"start": start} | {
                    key: interval(value - (FIGURES[start][key] + offset))
                    for key, value in m.items()
                    if key in FIGURES[start] and key in seeds.KEYS
                }
        metrics[name] = m
    metrics["judge_rm_agreement"] = {}
    report = {
        "dataset": "held_out.jsonl", "questions": 35, "samples_per_question": 4, "seed": 42, "temperature": 0.7,
        "max_new_tokens": 48, "missing": {}, "metrics": metrics,
    }  # fmt: skip
    missing = [name for name in FIGURES if name not in methods]
    report["missing"] = {name: f"python {paths.METHODS[name].script} --tiny" for name in missing}
    if with_intervals:
        report["chosen"] = {"judge_mean_score": interval(0.5), "judge_share_rude": interval(0.375)}
    return report


def run_seeds(capsys, *args) -> tuple[int, str, str]:
    """python -m hfppo.seeds with `args`: its exit status, stdout and stderr."""
    try:
        seeds.run(list(map(str, args)))
        status = 0
    except SystemExit as exit:
        status = exit.code
    printed = capsys.readouterr()
    return status, printed.out, printed.err


def write_runs(folder, reports: dict) -> None:
    """Each seed's report where make seeds' run at that seed leaves it."""
    for seed, report in reports.items():
        path = folder / str(seed) / seeds.REPORT
        path.parent.mkdir(parents=True)
        path.write_text(report if isinstance(report, str) else json.dumps(report), encoding="utf-8")


OFFSETS = {42: 0.0, 1: 1.0, 2: 2.0}  # the seeds' figures a, a + 1, a + 2: mean a + 1, sample sd 1


def aggregated(**kwargs) -> dict:
    return seeds.aggregate({seed: comparison_report(offset, **kwargs) for seed, offset in OFFSETS.items()}, "runs")


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_its_mean_and_sample_sd_across_seeds(name):
    figures_of = aggregated()["methods"][name]["figures"]
    assert list(figures_of) == [key for key in seeds.KEYS if key in FIGURES[name]]
    for key, spread in figures_of.items():
        assert spread == {
            "mean": FIGURES[name][key] + 1,
            "sd": 1.0,
            "values": [FIGURES[name][key] + o for o in (0, 1, 2)],
        }


def test_one_seed_has_no_sd():
    report = seeds.aggregate({7: comparison_report(0.0)}, "runs")
    assert report["methods"]["ppo"]["figures"]["mean_reward"] == {"mean": 2.5, "sd": None, "values": [2.5]}
    assert "+2.500 ± -" in figures.seeds_tables(report).replace(figures.MINUS, "-")


def test_without_any_intervals_every_difference_is_still_listed_as_missing():
    report = seeds.aggregate({7: comparison_report(0.0, with_intervals=False)}, "runs")
    lines = figures.seeds_lines(report)
    differences = lines[lines.index(figures.DIFFERENCES_TITLE) + 2 :]
    listed = [line.split()[:-2] for line in differences if line.endswith(" -")]
    assert listed == [
        ["SFT", "-", "base", "reward", "model"], ["judge", "score"], ["judged", "rude"], ["tokens"], ["finished"],
        ["PPO", "-", "SFT", "reward", "model"], ["judge", "score"], ["judged", "rude"], ["tokens"], ["finished"],
    ]  # fmt: skip
    assert differences[len(listed)] == "Seed 7 has point figures only, no intervals (written by a compare.py " + (
        "without them): - in the cells of their differences. Rerun make seeds for them."
    )


def test_each_seeds_paired_intervals_are_kept_by_seed():
    report = aggregated()
    assert report["seeds"] == [42, 1, 2]
    vs_start = report["methods"]["ppo"]["vs_start"]
    assert list(vs_start) == ["42", "1", "2"]
    assert vs_start["1"]["judge_share_rude"] == interval(0.0625)
    assert report["methods"]["base"]["start"] is None and report["methods"]["sft"]["start"] == "base"
    assert report["chosen"]["judge_share_rude"] == {"mean": 0.375, "sd": 0.0, "values": [0.375] * 3}


def test_the_table_shows_mean_sd_and_each_seeds_interval():
    lines = figures.seeds_lines(aggregated())
    assert lines[0].startswith("Training seeds 42, 1 and 2 (make seeds), each compared on 35 questions, 4 answers")
    ppo = next(line for line in lines if line.startswith("PPO "))
    assert ppo.split()[1:6] == ["3", "+3.500", "±", "1.000", "+1.250"]
    rude = next(i for i, line in enumerate(lines) if line.startswith("PPO - SFT"))
    # judged rude: PPO 0.125 against SFT's 0.0625 at every seed, each interval +-0.25 around it
    row = next(line for line in lines[rude:] if "judged rude" in line)
    assert row.count("+0.062 [-0.188, +0.312]") == 3 and row.endswith("3 hold 0")


def test_a_seed_missing_a_method_is_said_and_left_out_of_its_mean():
    reports = {42: comparison_report(0.0), 1: comparison_report(1.0, methods=("base", "sft"))}
    report = seeds.aggregate(reports, "runs")
    assert report["methods"]["ppo"]["seeds"] == [42]
    assert report["methods"]["ppo"]["figures"]["mean_reward"]["mean"] == 2.5
    assert report["missing"] == {"1": {"ppo": "python train_ppo.py --tiny"}}
    assert "PPO is not in seed 1's comparison (made by python train_ppo.py --tiny)" in figures.seeds_tables(report)


def test_a_report_without_intervals_shows_its_point_figures_and_says_so():
    reports = {42: comparison_report(0.0), 1: comparison_report(1.0, with_intervals=False)}
    report = seeds.aggregate(reports, "runs")
    assert report["without_intervals"] == [1] and "chosen" not in report
    assert report["methods"]["ppo"]["figures"]["mean_reward"]["mean"] == 3.0
    text = "\n".join(figures.seeds_lines(report))
    assert "Seed 1 has point figures only, no intervals" in text
    row = next(line for line in text.splitlines() if line.startswith("PPO - SFT"))
    assert row.endswith("+0.500 [+0.250, +0.750]    -                          1 above 0")


def with_point_interval() -> dict:
    """A report whose PPO difference in judged rude is a number, not an interval."""
    report = comparison_report(1.0)
    report["metrics"]["ppo"]["vs_start"]["judge_share_rude"] = 0.0625
    return report


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "no comparison report for seed 1; its run stopped before compare.py"),
        ('{"metrics": {', "the comparison report for seed 1, is damaged: Expecting property name"),
        ("[1, 2]", "the report for seed 1, is not a comparison report (it has no metrics)"),
        (json.dumps({"metrics": {"sft": {"mean_reward": 1.0}}}), "has no judge_mean_score, judge_share_rude, "),
        (json.dumps(with_point_interval()), "has no vs_start judge_share_rude for ppo"),
        (
            json.dumps(comparison_report(1.0) | {"chosen": {"judge_share_rude": {"mean": 0.3}}}),
            "has no judge_share_rude for the chosen answers",
        ),
    ],
)
def test_a_missing_or_damaged_report_is_named_with_what_to_do(tmp_path, capsys, content, problem):
    reports = {42: comparison_report(0.0)} | ({} if content is None else {1: content})
    write_runs(tmp_path, reports)
    status, _, stderr = run_seeds(capsys, "--seeds", 42, 1, "--runs_dir", tmp_path)
    assert status == 1
    message = " ".join(stderr.split())
    assert message.startswith(f"error: {tmp_path / '1' / seeds.REPORT}")
    assert problem in message and f"cd {tmp_path / '1'} && python {paths.ROOT / 'compare.py'} --tiny" in message
    assert not (tmp_path / figures.SEEDS_REPORT).exists()


def test_seeds_sampled_differently_are_refused():
    other = comparison_report(1.0) | {"samples_per_question": 1}
    with pytest.raises(
        errors.PipelineError, match="seeds 42 and 1 were not sampled alike .samples_per_question 4 against 1"
    ):
        seeds.aggregate({42: comparison_report(0.0), 1: other}, "runs")


@pytest.mark.parametrize(
    "flags, problem", [(["--seeds", 1, 2, 1], "--seeds gives 1 more than once"), (["--seeds", "x"], "--seeds")]
)
def test_bad_seeds_are_refused(tmp_path, capsys, flags, problem):
    status, _, stderr = run_seeds(capsys, *flags, "--runs_dir", tmp_path)
    assert status == 2 and problem in stderr


def test_the_command_prints_the_table_and_writes_the_report(tmp_path, capsys):
    write_runs(tmp_path / "runs", {seed: comparison_report(offset) for seed, offset in OFFSETS.items()})
    output = tmp_path / "seeds_report.json"
    runs = tmp_path / "runs"
    status, stdout, stderr = run_seeds(capsys, "--seeds", 42, 1, 2, "--runs_dir", runs, "--output_file", output)
    assert status == 0, stderr
    written = json.loads(output.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(aggregated() | {"runs_dir": str(tmp_path / "runs")}))
    assert stdout.startswith("\n".join(figures.seeds_lines(written)))


def test_the_seeds_block_renders_from_the_report(tmp_path):
    figures.write(tmp_path / figures.SEEDS_REPORT, aggregated())
    page = "<!-- figures:seeds -->\n<!-- /figures -->\n"
    text = figures.rendered(page, "page.md", tmp_path)
    body = text.split("\n", 1)[1]
    assert body.startswith(figures.seeds_tables(aggregated()))
    assert "| PPO | 3 | +3.500 ± 1.000 |" in body
    assert re.search(r"\| PPO − SFT \| reward model \| (\+0\.500 \[\+0\.250, \+0\.750\] \| ){3}3 above 0 \|", body)
    assert figures.stale_blocks(text, "page.md", tmp_path) == []


TRAINING_SCRIPTS = {"train_rm.py", "train_sft.py", "train_ppo.py", "train_dpo.py", "train_grpo.py"}


def demo_commands(tmp_path, *variables) -> list[str]:
    """The Python commands of make's demo-run, as make -n prints them (nothing runs), with `variables` set."""
    make = [shutil.which("make"), "-n", "-f", paths.ROOT / "Makefile", "demo-run", "PYTHON=python", "SRC=", *variables]
    printed = subprocess.run(make, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    return [line for line in printed.splitlines() if re.search(r"python \w+\.py", line)]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_seeds_run_trains_every_stage_at_its_seed_and_samples_the_comparison_alike(tmp_path):
    commands = demo_commands(tmp_path, "SEED_FLAG=--seed 7")
    training = [line for line in commands if re.search(r"train_\w+\.py", line)]
    assert {re.search(r"train_\w+\.py", line).group() for line in training} == TRAINING_SCRIPTS
    assert all(line.endswith(" --seed 7") for line in training)
    assert [line for line in commands if "--seed" in line] == training  # compare.py samples at its own seed
    assert not any("--seed" in line for line in demo_commands(tmp_path))  # make demo: each stage's default
