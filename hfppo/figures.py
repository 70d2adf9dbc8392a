"""The figures README.md and docs/ quote, rendered from the report files of one `make demo` run, kept in
docs/reports/: one source for every figure of the demo.

A page quotes a report between two markers, each on a line of its own:

    <!-- figures:compare-table -->
    (what BLOCKS["compare-table"] renders; never edited by hand)
    <!-- /figures -->

`make figures` runs the demo in a temporary folder, copies its reports here (collect) and rewrites every block
(python -m hfppo.figures RUN_DIR); tests/test_figures.py fails when a block differs from what its report renders.
`make seeds` writes one more, seeds.json, over several runs of the demo (hfppo/seeds.py), and rewrites the blocks.
"""

import contextlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hfppo import audit, charts, errors, intervals, judge, paths

REPORTS_DIR = paths.ROOT / "docs" / "reports"
# The pages that may quote a report: the README and every page of docs/.
PAGES = [paths.ROOT / "README.md", *sorted((paths.ROOT / "docs").glob("*.md"))]
# Each committed report: the file of a demo run it copies, relative to the run's folder.
COPIED = {
    "compare.json": Path("checkpoint/ppo") / paths.METRICS_FILE,
    "rm.json": Path("checkpoint/rm") / paths.METRICS_FILE,
    "rm_styles.json": Path("checkpoint/rm_style_metrics.json"),
}
SEEDS_REPORT = "seeds.json"  # make seeds' table over training seeds (hfppo/seeds.py), written there directly
PPO_EVALS = "ppo_evals.json"  # PPO's held-out evaluations, read from its TensorBoard scalars (eval/*)
# The comparison's answers to the first questions, as many as it prints (compare.py --num_examples, default 1): the
# others are quoted nowhere, and would make the committed report a hundred times longer.
QUOTED_QUESTIONS = 1
BLOCK = re.compile(r"^<!-- figures:(?P<name>[\w-]+) -->\n(?P<body>.*?)^<!-- /figures -->$", re.M | re.S)
OPENING = re.compile(r"^<!-- figures:.*-->$", re.M)
# What each method's examples per second count, in the results table.
UNITS = {"sft": "sequences", "ppo": "answers", "ppo_base": "answers", "dpo": "pairs", "grpo": "answers"}
MINUS = "\N{MINUS SIGN}"  # the tables' typeset minus


def load(name: str, folder: Path = REPORTS_DIR) -> dict:
    """One committed report, by its file name in `folder`."""
    path = Path(folder) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise errors.PipelineError(
            f"{path} cannot be read ({error}). Run make figures, which writes the reports the docs quote."
        ) from error


def signed(value: float, digits: int) -> str:
    """A figure with its sign, the minus typeset as in the tables (−1.294)."""
    return f"{value:+.{digits}f}".replace("-", MINUS)


def methods(report: dict) -> list[str]:
    """The comparison's methods, in its order (the base model first)."""
    return [name for name in report["metrics"] if name in paths.METHODS]


def compare_table(report: dict, cost: bool = False) -> str:
    """The comparison as a Markdown table, one row a method, each figure with its 95% interval, and the data's chosen
    answers' judge figures; `cost`: with each method's examples per second."""
    columns = [*SCORE_COLUMNS, *COST_COLUMNS[:-1]]  # examples/s: with its unit, below
    header = "| method | " + " | ".join(column.title for column in columns) + " |"
    if cost:
        header += " examples/s |"
    lines = [header, "|---" * header.count(" | ") + "|---|"]

    def row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *(text.replace("-", MINUS) for text in cells)]) + " |"

    for name in methods(report):
        m = report["metrics"][name]
        cells = [cell(m, column) for column in columns]
        if cost:
            per_second = m.get("train_samples_per_second")
            cells.append("" if per_second is None else f"{per_second:.1f} {UNITS[name]}")
        lines.append(row(paths.METHODS[name].label, cells))
    cells = [cell({"intervals": report["chosen"]}, column) for column in columns] + [""] * cost
    lines.append(row("chosen answers (the data)", cells))
    return "\n".join(lines) + "\n"


def agreement_sentence(report: dict) -> str:
    """The judge's agreement with the reward model, one pair of methods after another, in one sentence."""
    pairs = []
    for pair, a in report["metrics"]["judge_rm_agreement"].items():
        later, earlier = (paths.METHODS[name].label for name in pair.split("_vs_"))
        share = "-" if a["agreement"] is None else f"{a['agreement']:.3f}"
        pairs.append(f"{later} vs {earlier} {share} ({a['questions']})")
    return (
        "Judge–reward-model agreement on the questions where the judge tells the two answers apart (their count in "
        f"brackets): {', '.join(pairs)}.\n"
    )


# The comparison's console lines, one definition for compare.py, which prints them, and for the docs, which quote them.
@dataclass(frozen=True)
class Column:
    """A column of the comparison's table: its title, the metrics key it shows, and the format of its figures."""

    title: str
    key: str
    digits: str  # a format spec without the sign: ".2f"
    signed: bool = False  # a figure that can be negative, shown with its sign

    @property
    def width(self) -> int:
        """Wide enough for a figure and its interval ("+2.54 [+2.21, +2.85]"), or, for a column without intervals,
        its title."""
        return INTERVAL_WIDTH if self.key in INTERVAL_KEYS else len(self.title)


# The figures that get a 95% interval (compare.py: a bootstrap over questions), and a cell wide enough for one.
INTERVAL_KEYS = (
    "mean_reward",
    "judge_mean_score",
    "judge_share_rude",
    "mean_answer_tokens",
    "share_finished",
    "mean_kl_to_sft",
)
INTERVAL_WIDTH = 20
# The table in two parts, each narrow enough to read: what the reward model and the judge score, then what it cost.
SCORE_COLUMNS = (
    Column("reward model", "mean_reward", ".2f", signed=True),
    Column("reward > 0", "share_reward_positive", ".3f"),
    Column("judge score", "judge_mean_score", ".2f", signed=True),
    Column("judged rude", "judge_share_rude", ".2f"),
)
COST_COLUMNS = (
    Column("tokens", "mean_answer_tokens", ".1f"),
    Column("finished", "share_finished", ".2f"),
    Column("KL to SFT", "mean_kl_to_sft", ".2f"),
    Column("train s", "train_runtime_s", ".1f"),
    Column("examples/s", "train_samples_per_second", ".2f"),
)
NAME_WIDTH = 10  # "ppo_base" and "  vs base", and a space
CHOSEN = "chosen"  # the row of the data's own chosen answers
TABLE_NOTES = [
    "[low, high]: the 95% interval, a bootstrap over the questions (each question's answers together).",
    "vs <start>: the method minus the model it starts from, question by question (a paired interval).",
    "chosen: the held-out rows' chosen answers (the data), one a question: what a perfect imitation would reach.",
]


def formatted(value: float, digits: str, signed: bool) -> str:
    """One figure, with its sign where it can be negative."""
    return f"{value:{'+' if signed else ''}{digits}}"


def with_interval(interval: dict, digits: str, signed: bool) -> str:
    """A mean and its 95% interval: "+2.54 [+2.21, +2.85]"."""
    low, high = (formatted(interval[end], digits, signed) for end in ("low", "high"))
    return f"{formatted(interval['mean'], digits, signed)} [{low}, {high}]"


def cell(m: dict, column: Column) -> str:
    """A method's figure in `column`, with its interval where it has one (m["intervals"]); empty where it has none."""
    if column.key in m.get("intervals", {}):
        return with_interval(m["intervals"][column.key], column.digits, column.signed)
    return formatted(m[column.key], column.digits, column.signed) if column.key in m else ""


def difference_cell(change: dict, column: Column) -> str:
    """A method's difference from its start in `column` (a paired interval), always signed; empty where none."""
    return with_interval(change[column.key], column.digits, True) if column.key in change else ""


def table_row(name: str, cells: list[str], columns: tuple[Column, ...]) -> str:
    """One line of the table: the name, then each cell padded to its column."""
    padded = [text.ljust(column.width) for text, column in zip(cells, columns)]
    return f"{name:<{NAME_WIDTH}}" + "  ".join(padded).rstrip()


def table_header(columns: tuple[Column, ...]) -> str:
    return table_row("method", [column.title for column in columns], columns)


TABLE_HEADER = table_header(SCORE_COLUMNS)
COST_HEADER = table_header(COST_COLUMNS)


def table_title(questions: int, dataset: str, temperature: float, seed: int, samples_per_question: int) -> str:
    """The line above the comparison's table: what was sampled, and how."""
    answers = f"{samples_per_question} answer{'s' if samples_per_question > 1 else ''} each"
    return f"{questions} questions of {dataset}, {answers}, sampled at temperature {temperature}, seed {seed}:"


def method_rows(name: str, m: dict, columns: tuple[Column, ...]) -> list[str]:
    """A method's row of one part of the table (`columns`), from its metrics `m`, and under it, where it has a start
    (m["vs_start"]), its difference from it."""
    rows = [table_row(name, [cell(m, column) for column in columns], columns)]
    if "vs_start" in m:
        change = m["vs_start"]
        rows.append(table_row(f"  vs {change['start']}", [difference_cell(change, c) for c in columns], columns))
    return rows


def chosen_row(chosen: dict) -> str:
    """The row of the data's chosen answers: the judge's figures only (`chosen`: their intervals by metrics key)."""
    return method_rows(CHOSEN, {"intervals": chosen}, SCORE_COLUMNS)[0]


def table_lines(report: dict) -> list[str]:
    """The comparison's table as printed: its title, each method's figures and difference from its start in two
    parts, the chosen answers' row, the methods not found, and what the brackets and rows mean."""
    names = methods(report)
    metrics = report["metrics"]
    lines = [
        table_title(
            report["questions"], report["dataset"], report["temperature"], report["seed"],
            report["samples_per_question"],
        ),
        TABLE_HEADER,
        *(row for name in names for row in method_rows(name, metrics[name], SCORE_COLUMNS)),
    ]  # fmt: skip
    lines += [chosen_row(report["chosen"]), COST_HEADER]
    lines += [row for name in names for row in method_rows(name, metrics[name], COST_COLUMNS)]
    lines += [missing_row(name, command) for name, command in report["missing"].items()]
    return [*lines, *TABLE_NOTES]


def missing_row(name: str, command: str) -> str:
    """The row of a method the comparison did not find, with the command that trains it."""
    return f"{name:<8} not found: {command}"


def agreement_line(pair: str, a: dict) -> str:
    """The judge's agreement with the reward model on one pair of methods ("ppo_vs_sft")."""
    share = "  -  " if a["agreement"] is None else f"{a['agreement']:.3f}"
    pair = pair.replace("_vs_", " vs ")
    return f"  {pair:<16} {share} of {a['questions']} questions ({a['ties']} judge ties left out)"


def one_line(answer: str) -> str:
    """An answer on one line of the table, its line breaks shown as ⏎ (the JSON file keeps them)."""
    return re.sub(r"\r\n|\r|\n", "⏎", answer)


def answer_line(name: str, reward: float, judge: float, answer: str) -> str:
    """A method's answer to an example question, with its reward and judge scores."""
    return f"  {name:<8} {reward:+.3f} {judge:+3.0f}  {one_line(answer)}"


def console_table(report: dict) -> list[str]:
    """The comparison's table as compare.py prints it, with the judge's agreement under it."""
    agreement = [agreement_line(pair, a) for pair, a in report["metrics"]["judge_rm_agreement"].items()]
    return [*table_lines(report), *agreement]


def console_examples(report: dict) -> list[str]:
    """The comparison's first questions, every method's answer with its reward and judge scores, as printed."""
    lines = []
    for row in report["answers"][:QUOTED_QUESTIONS]:
        lines.append(f"问题: {row['question']}")
        for name in methods(report):
            first = row[name][0]  # as compare.py prints: each method's first answer
            lines.append(answer_line(name, first["reward"], first["judge"], first["answer"]))
    return lines


def verdicts(report: dict) -> str:
    """The end of the comparison's output: its table and the verdict lines, in a code block."""
    return code_block([*console_table(report), *report["checks"]])


def rm_lines(report: dict) -> list[str]:
    """eval_rm.py's figures for one set of pairs, as printed: accuracy and margin, the judge's, and the audit."""
    agreement = report["judge_rm_agreement"]
    lines = [
        f"{report['pairs']} pairs of {report['dataset']}"
        f"{f' ({skipped} longer ones skipped)' if (skipped := report['skipped_pairs']) else ''}:",
        f"  accuracy        {report['accuracy']:.3f}   share of pairs where chosen scores above rejected",
        f"  mean margin     {report['mean_margin']:+.3f}  chosen - rejected",
        f"  mean chosen     {report['mean_chosen_reward']:+.3f}",
        f"  mean rejected   {report['mean_rejected_reward']:+.3f}",
        "The lexicon judge on the same pairs, a second opinion that no stage trained on:",
        f"  judge accuracy  {report['judge_accuracy']:.3f}   share of pairs where chosen is judged the ruder",
        f"  judge ties      {report['judge_ties']:.3f}   share judged alike (no verdict; not counted as right)",
        f"  agreement       {'  -  ' if agreement is None else f'{agreement:.3f}'}   of the "
        f"{report['judge_ranked_pairs']} pairs the judge does not tie, share the reward model ranks the same way",
    ]
    if "judge_recall" in report:  # absent from a report eval_rm.py wrote before it audited the judge
        lines += judge.audit_lines(report)
    if "audit" in report:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            audit.print_audit(audit.Audit(**report["audit"]))
        lines += printed.getvalue().rstrip("\n").split("\n")  # its first line blank, as printed
    return lines


def ppo_eval_line(e: dict) -> str:
    """train_ppo.py's line for one held-out evaluation (`e`: its update and eval/* figures): the scores with their 95%
    intervals in brackets, where the evaluation logged them (a report from before the intervals has none)."""

    def figure(tag: str, places: int) -> str:
        low, high = charts.band_tags(tag)
        bounds = f" [{e[low]:+.{places}f}, {e[high]:+.{places}f}]" if low in e and high in e else ""
        return f"{e[tag]:+.{places}f}{bounds}"

    return (
        f"eval at update {e['update']}: score {figure('eval/score', 3)}, judge {figure('eval/judge_score', 2)} "
        f"({e['eval/judged_rude']:.2f} judged rude), KL {e['eval/kl']:.3f}, "
        f"{e['eval/answer_length']:.1f} tokens, {e['eval/finished']:.2f} finished"
    )


def ppo_eval_lines(report: dict) -> list[str]:
    """train_ppo.py's held-out evaluation lines, as printed."""
    return [ppo_eval_line(e) for e in report["evaluations"]]


def transcript(folder: Path = REPORTS_DIR) -> str:
    """What `make demo` prints of its figures, stage by stage, in a code block."""
    compare = load("compare.json", folder)
    return code_block([
        "== the reward model on its held-out pairs",
        *rm_lines(load("rm.json", folder)),
        "== the reward model on hand-written pairs in styles the sample does not use (never trained on)",
        *rm_lines(load("rm_styles.json", folder)),
        "== PPO's evaluations on the held-out questions (train_ppo.py --tiny)",
        *ppo_eval_lines(load(PPO_EVALS, folder)),
        "== every method on the questions no stage trained on",
        *console_examples(compare),
        "",
        *console_table(compare),
        *compare["checks"],
    ])  # fmt: skip


def ppo_summary(report: dict) -> str:
    """PPO after SFT against SFT, in two sentences: the reward model's gain, the length, and the judge's figures, each
    difference with its paired 95% interval over the same questions."""
    m, sft, change = report["metrics"]["ppo"], report["metrics"]["sft"], report["metrics"]["ppo"]["vs_start"]
    return (
        f"PPO after SFT raises the reward model's score {with_interval(change['mean_reward'], '.2f', True)} above "
        f"SFT's, at {m['mean_answer_tokens'] / sft['mean_answer_tokens']:.0%} of SFT's length. The lexicon judge, "
        f"which no stage optimised, scores its answers {with_interval(change['judge_mean_score'], '.2f', True)} "
        f"against SFT's, and the share it judges rude moves {with_interval(change['judge_share_rude'], '.2f', True)} "
        f"from SFT's {sft['judge_share_rude']:.2f} (seed {report['seed']}, {report['samples_per_question']} answers "
        f"to each of {report['questions']} questions; 95% paired intervals).\n"
    )


def alarm_named(report: dict, name: str) -> bool:
    """Whether the comparison's reward-hacking alarm named the method."""
    return any(text.startswith(f"{paths.METHODS[name].label}: ") for text in report["checks"])


def evaluation_figure(evaluation: dict, tag: str, digits: str) -> str:
    """One held-out evaluation's figure `tag` with its 95% interval, from the bounds PPO logs beside it."""
    low, high = charts.band_tags(tag)
    return with_interval({"mean": evaluation[tag], "low": evaluation[low], "high": evaluation[high]}, digits, True)


def ppo_run_summary(evaluations: dict, report: dict) -> str:
    """PPO's held-out evaluations, first against last, each with its interval, its alarm, and the comparison's
    paired differences of PPO from SFT."""
    first, last = evaluations["evaluations"][0], evaluations["evaluations"][-1]
    spoke = [e["update"] for e in evaluations["evaluations"] if e.get("eval/hacking_signs", 0) > 0]
    change = report["metrics"]["ppo"]["vs_start"]
    alarm = (
        f"The reward-hacking alarm spoke at update {', '.join(map(str, spoke))}."
        if spoke
        else "The reward-hacking alarm never spoke."
    )
    return (
        f"On the held-out questions (seed {report['seed']}, `make demo`, one answer a question), PPO after SFT moved "
        f"the reward model's score from {evaluation_figure(first, 'eval/score', '.2f')} before the first update to "
        f"{evaluation_figure(last, 'eval/score', '.2f')} after update {last['update']}, at "
        f"{first['eval/answer_length']:.1f} to {last['eval/answer_length']:.1f} tokens. The lexicon judge went from "
        f"{evaluation_figure(first, 'eval/judge_score', '.2f')} to "
        f"{evaluation_figure(last, 'eval/judge_score', '.2f')}. "
        f"{alarm} Sampled again by the comparison ({report['samples_per_question']} answers a question), PPO scores "
        f"{with_interval(change['mean_reward'], '.2f', True)} above SFT; the judge's score moves "
        f"{with_interval(change['judge_mean_score'], '.2f', True)} and the share judged rude "
        f"{with_interval(change['judge_share_rude'], '.2f', True)} (paired 95% intervals).\n"
    )


def from_base_summary(report: dict) -> str:
    """The original's claim on the demo: PPO from the base against PPO after SFT, each gain with its paired
    interval."""
    metrics = report["metrics"]
    gain = {
        name: with_interval(metrics[name]["vs_start"]["mean_reward"], ".2f", True)
        for name in ("ppo_base", "sft", "ppo")
    }
    named = "names" if alarm_named(report, "ppo_base") else "does not name"
    return (
        f"In [the comparison](results.md#every-method-side-by-side) PPO from the base gains {gain['ppo_base']} over "
        f"the base model on the reward model. SFT gains {gain['sft']}, and PPO after SFT a further {gain['ppo']} "
        f"(paired 95% intervals). The judge finds {metrics['ppo_base']['judge_share_rude']:.3f} of PPO from the "
        f"base's answers rude, and the comparison's reward-hacking alarm {named} it (seed {report['seed']}).\n"
    )


def rm_summary(held_out: dict, styles: dict) -> str:
    """The reward model on both sets of pairs against the lexicon judge, and its audit, in sentences."""
    found = held_out["audit"]
    non_answers = [p["score"] for p in found["probes"] if p["kind"] == audit.NON_ANSWER]
    correlations = ", ".join(
        "-" if r is None else f"{r:+.2f}"
        for r in (found["length_correlation_chosen"], found["length_correlation_rejected"])
    )
    verdict = "finds no shortcut" if not found["verdicts"] else f"finds: {'; '.join(found['verdicts'])}"
    return (
        f"The reward model ranks the rude answer first on {held_out['accuracy']:.3f} of the {held_out['pairs']} "
        f"held-out pairs and {styles['accuracy']:.3f} of the {styles['pairs']} hand-written pairs in other styles; "
        f"the lexicon judge's word count on {held_out['judge_accuracy']:.3f} and {styles['judge_accuracy']:.3f}. "
        f"Its audit {verdict}. The score's correlation with length within each side is r = {correlations}. The "
        f"non-answers score {signed(min(non_answers), 2)} to {signed(max(non_answers), 2)}, against the median "
        f"rejected (polite) answer's {signed(found['median_rejected'], 2)}.\n"
    )


def seed_row(held_out: dict, styles: dict, report: dict) -> str:
    """The demo's row of the table over training seeds: the reward model's figures, SFT's and PPO's judged rude,
    PPO's length and KL, and PPO from the base's length, finished share and alarm."""
    found = held_out["audit"]
    full_stop = next(p["score"] for p in found["probes"] if p["answer"] == "。")
    below = "<" if full_stop < found["median_rejected"] else ">="
    sft, ppo, from_base = (report["metrics"][name] for name in ("sft", "ppo", "ppo_base"))
    alarm = " (named by the alarm)" if alarm_named(report, "ppo_base") else ""
    row = [
        str(report["seed"]),
        f"{held_out['accuracy']:.3f}",
        f"{styles['accuracy']:.3f}",
        f"{signed(full_stop, 2)} {below} {signed(found['median_rejected'], 2)}",
        f"{sft['judge_share_rude']:.3f}",
        f"{ppo['judge_share_rude']:.3f}",
        f"{ppo['mean_answer_tokens']:.1f} / {sft['mean_answer_tokens']:.1f}",
        f"{ppo['mean_kl_to_sft']:.2f}",
        f"{from_base['mean_answer_tokens']:.1f} tokens, {from_base['share_finished']:.2f} finished{alarm}",
    ]
    return SEEDS_HEADER + "| " + " | ".join(row) + " |\n"


# The columns of the table over training seeds (docs/results.md).
SEEDS_HEADER = (
    "| seed | RM held out | RM style pairs | RM: 。 against the median polite | SFT judged rude | PPO judged rude | "
    "PPO tokens / SFT's | PPO KL | PPO from the base |\n|---|---|---|---|---|---|---|---|---|\n"
)


# The table over training seeds of `make seeds` (hfppo/seeds.py's report): each figure's name in its columns, its
# digits, and whether it is shown with its sign (the scores; the shares, lengths and KL are never negative).
SEED_FIGURES = {
    "mean_reward": ("reward model", 3, True),
    "judge_mean_score": ("judge score", 3, True),
    "judge_share_rude": ("judged rude", 3, False),
    "mean_answer_tokens": ("tokens", 1, False),
    "share_finished": ("finished", 3, False),
    "mean_kl_to_sft": ("KL to SFT", 2, False),
}
# The differences docs/results.md quotes per seed: those the verdicts read (the console shows every one).
VERDICT_FIGURES = ("mean_reward", "judge_mean_score", "judge_share_rude")
CHOSEN_LABEL = "the chosen answers"  # the data's own answers to the same questions: the judge's ceiling
NO_INTERVAL = "-"  # a seed whose report has no intervals, or a figure with no spread (one seed)
# The printed table's columns: a row's label (the longest, "the chosen answers"), a mean ± sd ("+2.016 ± 0.120"), and
# a difference with its interval ("+0.530 [+0.210, +0.850]") or its label ("PPO from the base - base").
LABEL_WIDTH, FIGURE_WIDTH, DIFFERENCE_WIDTH = 20, 16, 26


def seed_figure(key: str, value: float, typeset: bool, sign: bool | None = None) -> str:
    """A figure of the table over seeds, in its digits, signed where it is a score (or `sign` says), the minus typeset
    for the docs."""
    _, digits, signed_figure = SEED_FIGURES[key]
    text = f"{value:+.{digits}f}" if (signed_figure if sign is None else sign) else f"{value:.{digits}f}"
    return text.replace("-", MINUS) if typeset else text


def mean_sd(key: str, spread: dict, typeset: bool) -> str:
    """A figure's mean ± sd across seeds ("+2.016 ± 0.120"); the sd "-" for one seed."""
    sd = NO_INTERVAL if spread["sd"] is None else seed_figure(key, spread["sd"], typeset, sign=False)
    return f"{seed_figure(key, spread['mean'], typeset)} ± {sd}"


def difference(key: str, found: dict | None, typeset: bool) -> str:
    """A seed's difference from the start, with its paired 95% interval: "+0.530 [+0.210, +0.850]"."""
    if found is None:
        return NO_INTERVAL
    low, high = (seed_figure(key, found[end], typeset, sign=True) for end in ("low", "high"))
    return f"{seed_figure(key, found['mean'], typeset, sign=True)} [{low}, {high}]"


def across_seeds(found: list[dict | None]) -> str:
    """How many seeds' paired intervals lie above 0, below 0, or hold it: "2 above 0, 1 holds 0"."""
    signs = [intervals.Interval(**f).sign for f in found if f is not None]
    counts = [(signs.count(1), "above 0"), (signs.count(-1), "below 0"), (signs.count(0), "holds 0")]
    words = [f"{n} {what if n == 1 or what != 'holds 0' else 'hold 0'}" for n, what in counts if n]
    return ", ".join(words) or NO_INTERVAL


def seed_rows(report: dict, typeset: bool) -> list[list[str]]:
    """Each method's row of mean ± sd across seeds (its label, its number of seeds, a cell a figure), then the chosen
    answers' where the reports have them."""
    rows = []
    for name, m in report["methods"].items():
        cells = [mean_sd(key, m["figures"][key], typeset) if key in m["figures"] else "" for key in SEED_FIGURES]
        rows.append([paths.METHODS[name].label, str(len(m["seeds"])), *cells])
    if "chosen" in report:
        chosen = report["chosen"]
        cells = [mean_sd(key, chosen[key], typeset) if key in chosen else "" for key in SEED_FIGURES]
        rows.append([CHOSEN_LABEL, str(len(report["seeds"])), *cells])
    return rows


def difference_rows(report: dict, keys, typeset: bool) -> list[list[str]]:
    """For each method with a start and each figure of `keys` that both it and its start have: the method less its
    start, the figure, each seed's difference with its paired interval ("-" where a seed's report has none), and how
    many of them lie above or below 0."""
    rows = []
    for name, m in report["methods"].items():
        if m["start"] is None:
            continue
        label = f"{paths.METHODS[name].label} {MINUS if typeset else '-'} {paths.METHODS[m['start']].label}"
        per_seed = [m["vs_start"].get(str(seed)) for seed in report["seeds"]]
        start_figures = report["methods"].get(m["start"], {"figures": {}})["figures"]
        for key in (key for key in keys if key in m["figures"] and key in start_figures):
            found = [found.get(key) if found else None for found in per_seed]
            rows.append(
                [label, SEED_FIGURES[key][0], *(difference(key, f, typeset) for f in found), across_seeds(found)]
            )
            label = ""
    return rows


def seeds_notes(report: dict) -> list[str]:
    """What the tables leave out: the methods a seed's report lacks, and the seeds whose reports have no intervals."""
    notes = []
    for seed, absent in report["missing"].items():
        for name, command in absent.items():
            make = f" (made by {command})" if command else ""
            notes.append(
                f"{paths.METHODS[name].label} is not in seed {seed}'s comparison{make}: its figures are over the "
                "other seeds."
            )
    bare = report["without_intervals"]
    if bare:
        seeds = errors.join_names([str(seed) for seed in bare])
        notes.append(
            f"{f'Seed {seeds} has' if len(bare) == 1 else f'Seeds {seeds} have'} point figures only, no intervals "
            f"(written by a compare.py without them): {NO_INTERVAL} in the cells of their differences. Rerun make "
            "seeds for them."
        )
    return notes


def seeds_title(report: dict) -> str:
    """What the table over seeds averages: the training seeds, and how each seed's comparison sampled."""
    s = report["sampling"]
    each = f", {s['samples_per_question']} answers each" if s.get("samples_per_question") else ", one answer each"
    return (
        f"Training seeds {errors.join_names([str(seed) for seed in report['seeds']])} (make seeds), each compared on "
        f"{s['questions']} questions{each}, sampled at temperature {s['temperature']}, seed {s['seed']}; mean ± sd "
        "across the seeds:"
    )


DIFFERENCES_TITLE = (
    "Each seed's difference from the method's start, with its paired 95% interval over the same questions:"
)


def seeds_lines(report: dict) -> list[str]:
    """The table over seeds as `python -m hfppo.seeds` prints it: mean ± sd, then every difference per seed."""
    header = ["method", "seeds", *(label for label, _, _ in SEED_FIGURES.values())]
    widths = [LABEL_WIDTH, len("seeds"), *(FIGURE_WIDTH for _ in SEED_FIGURES)]
    lines = [seeds_title(report)]
    for row in [header, *seed_rows(report, typeset=False)]:
        cells = [f"{row[0]:<{widths[0]}}", *(f"{cell:>{width}}" for cell, width in zip(row[1:], widths[1:]))]
        lines.append(" ".join(cells).rstrip())
    header = ["", "", *(f"seed {seed}" for seed in report["seeds"]), "across seeds"]
    widths = [DIFFERENCE_WIDTH, len("reward model"), *(DIFFERENCE_WIDTH for _ in report["seeds"]), 0]
    lines += ["", DIFFERENCES_TITLE]
    for row in [header, *difference_rows(report, SEED_FIGURES, typeset=False)]:
        lines.append(" ".join(f"{cell:<{width}}" for cell, width in zip(row, widths)).rstrip())
    return lines + seeds_notes(report)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def seeds_tables(report: dict) -> str:
    """The table over seeds for docs/results.md: mean ± sd, then each seed's differences the verdicts read."""
    header = ["method", "seeds", *(label for label, _, _ in SEED_FIGURES.values())]
    lines = [seeds_title(report), "", *markdown_table(header, seed_rows(report, typeset=True))]
    header = ["difference", "figure", *(f"seed {seed}" for seed in report["seeds"]), "across seeds"]
    lines += [
        "",
        DIFFERENCES_TITLE,
        "",
        *markdown_table(header, difference_rows(report, VERDICT_FIGURES, typeset=True)),
    ]
    notes = seeds_notes(report)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def code_block(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```\n"


# Every block a page may hold, by the name in its opening marker: what it renders from the reports in a folder.
BLOCKS = {
    "compare-table": lambda folder: compare_table(load("compare.json", folder)),
    "compare-table-cost": lambda folder: compare_table(load("compare.json", folder), cost=True),
    "compare-agreement": lambda folder: agreement_sentence(load("compare.json", folder)),
    "compare-verdicts": lambda folder: verdicts(load("compare.json", folder)),
    "demo-transcript": transcript,
    "ppo-summary": lambda folder: ppo_summary(load("compare.json", folder)),
    "ppo-run": lambda folder: ppo_run_summary(load(PPO_EVALS, folder), load("compare.json", folder)),
    "from-base": lambda folder: from_base_summary(load("compare.json", folder)),
    "rm-summary": lambda folder: rm_summary(load("rm.json", folder), load("rm_styles.json", folder)),
    "seeds": lambda folder: seeds_tables(load(SEEDS_REPORT, folder)),
    "seed-row": lambda folder: seed_row(
        load("rm.json", folder), load("rm_styles.json", folder), load("compare.json", folder)
    ),
}


def blocks(text: str, page: Path | str) -> list[re.Match]:
    """The blocks of a page, each opening marker closed and naming a block of BLOCKS."""
    found = list(BLOCK.finditer(text))
    starts = {match.start() for match in found}
    for opening in OPENING.finditer(text):
        if opening.start() not in starts:
            line = text.count("\n", 0, opening.start()) + 1
            raise errors.PipelineError(
                f"{page}, line {line}: {opening.group()} is not closed. Add <!-- /figures --> on a line of its own "
                "after the block."
            )
    for match in found:
        if match.group("name") not in BLOCKS:
            line = text.count("\n", 0, match.start()) + 1
            raise errors.PipelineError(
                f"{page}, line {line}: no block is named {match.group('name')!r}. The names: "
                f"{', '.join(BLOCKS)} (hfppo/figures.py)."
            )
    return found


def rendered(text: str, page: Path | str, folder: Path = REPORTS_DIR) -> str:
    """The page with every block rendered afresh from the reports in `folder`."""
    cache = {}
    pieces, end = [], 0
    for match in blocks(text, page):
        name = match.group("name")
        if name not in cache:
            cache[name] = BLOCKS[name](folder)
        pieces += [text[end : match.start("body")], cache[name]]
        end = match.end("body")
    return "".join(pieces) + text[end:]


def stale_blocks(text: str, page: Path | str, folder: Path = REPORTS_DIR) -> list[str]:
    """The names of the page's blocks that differ from what their report renders."""
    return [
        match.group("name")
        for match in blocks(text, page)
        if match.group("body") != BLOCKS[match.group("name")](folder)
    ]


def collect(run_dir: Path, folder: Path = REPORTS_DIR) -> None:
    """Copy a demo run's reports into `folder`: the comparison's with only its quoted answers, and PPO's held-out
    evaluations from its TensorBoard scalars."""
    run_dir = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in COPIED.items():
        report = without_root(load(source.name, run_dir / source.parent))
        if "answers" in report:
            report["answers"] = report["answers"][:QUOTED_QUESTIONS]
        write(folder / name, report)
    ppo_runs = sorted((run_dir / "tensorboard" / "ppo").iterdir())
    if len(ppo_runs) != 1:
        raise errors.PipelineError(
            f"{run_dir / 'tensorboard' / 'ppo'} holds {len(ppo_runs)} runs; make figures reads the one demo run."
        )
    scalars = charts.read_scalars(ppo_runs[0])
    tags = [tag for tag in scalars if tag.startswith("eval/")]
    updates = [step for step, _ in scalars["eval/score"]]
    evaluations = [
        {"update": update} | {tag: dict(scalars[tag])[update] for tag in sorted(tags)} for update in updates
    ]
    write(folder / PPO_EVALS, {"run": "train_ppo.py --tiny", "evaluations": evaluations})


def without_root(report: dict) -> dict:
    """The report with the project's folder left out of its paths (make figures passes the scripts' data by its full
    path), so that the committed copy names data/style_pairs.jsonl on any machine."""
    prefix = json.dumps(f"{paths.ROOT}/")[1:-1]
    return json.loads(json.dumps(report, ensure_ascii=False).replace(prefix, ""))


def write(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> None:
    """python -m hfppo.figures [RUN_DIR]: copy RUN_DIR's reports (a `make demo` folder), if given, then rewrite every
    page's blocks from docs/reports."""
    if argv:
        collect(Path(argv[0]))
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = rendered(text, page.relative_to(paths.ROOT))
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(paths.ROOT)}")


if __name__ == "__main__":
    from hfppo import lifecycle

    with lifecycle.user_errors():
        main(sys.argv[1:])
