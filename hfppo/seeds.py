"""Every method's figures over several training seeds: each seed's comparison report (compare.py's
eval_metrics.json, from `make seeds`, which runs the demo at each seed in a folder of its own), every figure as its
mean ± sd across the seeds, with each seed's paired 95% interval of the method's difference from its start.

    python -m hfppo.seeds --seeds 42 1 2 [--runs_dir checkpoint/seeds] [--output_file FILE]

reads <runs_dir>/<seed>/checkpoint/ppo/eval_metrics.json for each seed, prints the tables (hfppo/figures.py's
seeds_lines) and writes the aggregate to FILE (default <runs_dir>/seeds.json; `make seeds` writes
docs/reports/seeds.json, which docs/results.md quotes). One seed's run tells a method's effect from that run's noise
(its intervals); several tell it from the seed's luck (their spread).
"""

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hfppo import cli, errors, figures, lifecycle, outputs, paths

RUNS_DIR = paths.CHECKPOINT_ROOT / "seeds"  # make seeds: one folder a seed, <runs_dir>/<seed>/
DEFAULT_SEEDS = (42, 1, 2)  # the demo's seed and two more, as make seeds runs them
# Each run's comparison report, relative to its folder: where compare.py --tiny writes it.
REPORT = paths.PPO_DIR / paths.METRICS_FILE
# The figures averaged over seeds, in the table's order: those of the comparison that carry an interval.
KEYS = figures.INTERVAL_KEYS
# The figures every method's report must have: all but the KL to SFT, which SFT's lacks.
REQUIRED = tuple(key for key in KEYS if key != "mean_kl_to_sft")
# The chosen answers' own figures on the same questions (report["chosen"]): the ceiling a perfect imitation reaches.
CHOSEN = "chosen"
CHOSEN_KEYS = ("judge_mean_score", "judge_share_rude")
INTERVAL_ENDS = ("mean", "low", "high")  # an interval of the comparison's report, as hfppo/intervals.py's as_dict
# What must be the same in every seed's report for their figures to be averaged: the questions and their sampling.
SAMPLING = ("dataset", "questions", "samples_per_question", "seed", "temperature", "max_new_tokens")


@dataclass
class SeedsArguments:
    seeds: list[int] = field(
        default_factory=lambda: list(DEFAULT_SEEDS),
        metadata={"help": "The training seeds whose runs to read, each from <runs_dir>/<seed>/."},
    )
    runs_dir: str = field(
        default=str(RUNS_DIR), metadata={"help": "The folder of the seeds' runs, one folder a seed (make seeds')."}
    )
    output_file: str | None = field(
        default=None,
        metadata={
            "help": f"Where to write the JSON. Unset: <runs_dir>/{figures.SEEDS_REPORT}. make seeds writes "
            f"docs/reports/{figures.SEEDS_REPORT}, which docs/results.md quotes."
        },
    )


def check_seeds(seeds: list[int]) -> None:
    """Each seed a valid training seed, none given twice (it would count twice in the mean)."""
    for seed in seeds:
        if not 0 <= seed <= cli.MAX_SEED:
            raise errors.ArgumentError(f"--seeds {seed}: a seed is in [0, {cli.MAX_SEED}].")
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if twice:
        raise errors.ArgumentError(
            f"--seeds gives {errors.join_names([str(seed) for seed in twice])} more than once; each seed's run "
            "counts once in the mean. Give each seed once."
        )


def read_report(run: Path, seed: int) -> dict:
    """The comparison report of the run at `seed` in folder `run`, with a clear error where it is missing, is not
    JSON, or is not a comparison report."""
    path = run / REPORT
    rerun = (
        f"Write it again from that run's models (cd {run} && python {paths.ROOT / 'compare.py'} --tiny; it names "
        "what is missing), then run this again; or rerun make seeds."
    )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise errors.PipelineError(
            f"{path}: no comparison report for seed {seed}; its run stopped before compare.py (make seeds printed "
            f"why). {rerun}"
        ) from error
    except json.JSONDecodeError as error:
        raise errors.PipelineError(
            f"{path}, the comparison report for seed {seed}, is damaged: {errors.json_problem(error)} at line "
            f"{error.lineno}, column {error.colno}. {rerun}"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise errors.PipelineError(f"{path}, the report for seed {seed}, cannot be read ({error}). {rerun}") from error
    if not (isinstance(report, dict) and isinstance(report.get("metrics"), dict)):
        raise errors.PipelineError(
            f"{path}, the report for seed {seed}, is not a comparison report (it has no metrics). {rerun}"
        )
    for name in (name for name in paths.METHODS if name in report["metrics"]):
        m = report["metrics"][name]
        absent = [key for key in REQUIRED if not isinstance(m.get(key), int | float)]
        absent += [f"{part} {key}" for part in ("intervals", "vs_start") for key in malformed(m.get(part, {}))]
        if absent:
            raise errors.PipelineError(
                f"{path}, the report for seed {seed}, has no {errors.join_names(absent)} for {name}. {rerun}"
            )
    if malformed(report.get(CHOSEN, {})):
        raise errors.PipelineError(
            f"{path}, the report for seed {seed}, has no {errors.join_names(malformed(report[CHOSEN]))} for the "
            f"chosen answers. {rerun}"
        )
    return report


def malformed(found) -> list[str]:
    """The figures of a report's intervals (`found`: a figure's name to its {"mean", "low", "high"}; "start" names
    the method a difference is from) that are not such an interval of numbers: every one, where `found` is no
    mapping."""
    if not isinstance(found, dict):
        return ["intervals"]
    return [
        key
        for key, value in found.items()
        if key != "start"
        and not (isinstance(value, dict) and all(isinstance(value.get(end), int | float) for end in INTERVAL_ENDS))
    ]


def check_sampling(reports: dict[int, dict]) -> None:
    """Every seed's comparison asked the same questions the same way (SAMPLING), so that the seeds differ by their
    training alone; a seed sampled otherwise is refused, naming what differs."""
    first_seed, first = next(iter(reports.items()))
    for seed, report in reports.items():
        differ = [key for key in SAMPLING if report.get(key) != first.get(key)]
        if differ:
            shown = ", ".join(f"{key} {first.get(key)!r} against {report.get(key)!r}" for key in differ)
            raise errors.PipelineError(
                f"the comparisons of seeds {first_seed} and {seed} were not sampled alike ({shown}): their figures "
                "would differ by more than training. Rerun make seeds, which compares every seed alike."
            )


def spread(values: list[float]) -> dict:
    """Values across seeds: their mean and sample standard deviation (n - 1; None for one seed), and the values."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def method_figures(name: str, reports: dict[int, dict]) -> dict:
    """One method over the seeds whose reports have it: each figure's spread, and each seed's intervals and paired
    intervals of the difference from its start (None for a report without them)."""
    present = {seed: report["metrics"][name] for seed, report in reports.items() if name in report["metrics"]}
    keys = [key for key in KEYS if all(key in m for m in present.values())]
    return {
        "seeds": list(present),
        "start": paths.METHODS[name].start,
        "figures": {key: spread([m[key] for m in present.values()]) for key in keys},
        "intervals": {str(seed): m.get("intervals") for seed, m in present.items()},
        "vs_start": {str(seed): m.get("vs_start") for seed, m in present.items()},
    }


def aggregate(reports: dict[int, dict], runs_dir: str) -> dict:
    """The seeds' reports as one: the sampling they share, every method's figures across them, the chosen answers'
    own (where every report has them), the methods each seed lacks, and the seeds whose reports have no intervals."""
    check_sampling(reports)
    first = next(iter(reports.values()))
    names = [name for name in paths.METHODS if any(name in report["metrics"] for report in reports.values())]
    aggregated = {
        "seeds": list(reports),
        "runs_dir": runs_dir,
        "report": str(REPORT),
        "sampling": {key: first.get(key) for key in SAMPLING},
        "methods": {name: method_figures(name, reports) for name in names},
        "missing": {
            str(seed): {name: report.get("missing", {}).get(name) for name in absent}
            for seed, report in reports.items()
            if (absent := [name for name in names if name not in report["metrics"]])
        },
        "without_intervals": [
            seed for seed, report in reports.items() if not any("intervals" in m for m in report["metrics"].values())
        ],
    }
    if all(CHOSEN in report for report in reports.values()):
        aggregated[CHOSEN] = {
            key: spread([report[CHOSEN][key]["mean"] for report in reports.values()]) for key in CHOSEN_KEYS
        }
    return aggregated


def main(args: SeedsArguments) -> None:
    check_seeds(args.seeds)
    runs_dir = Path(args.runs_dir)
    output = Path(args.output_file) if args.output_file else runs_dir / figures.SEEDS_REPORT
    if not output.parent.is_dir():
        raise errors.ArgumentError(
            f"--output_file {output}: its folder {output.parent} does not exist. Create it, or pass another path."
        )
    reports = {seed: read_report(runs_dir / str(seed), seed) for seed in args.seeds}
    aggregated = aggregate(reports, args.runs_dir)
    print("\n".join(figures.seeds_lines(aggregated)))
    outputs.write_text_atomic(output, json.dumps(aggregated, ensure_ascii=False, indent=2) + "\n")
    print(f"\nWrote {output}")


def make_parser() -> cli.Parser:
    return cli.Parser((SeedsArguments,))


def run(argv: list[str]) -> None:
    """The command: its flags parsed (no --tiny: it reads reports, not models), every problem one paragraph."""
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), {}, argv))


if __name__ == "__main__":
    run(sys.argv[1:])
