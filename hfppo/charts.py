"""A run's TensorBoard folder, its scalars read back, and the chart of them."""

import itertools
import logging
import math
import os
import time
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from hfppo import errors, outputs, paths

# Charts: panels of 4 x 3 inches at 100 dpi, 3 a row, so a chart is at most 1200 px wide and reads at README width;
# the smoothing weight is TensorBoard's default, so the chart looks like the TensorBoard page.
CHART_COLUMNS = 3
CHART_PANEL_SIZE = (4, 3)
CHART_DPI = 100
CHART_SMOOTHING = 0.6
# Evaluations (PPO's eval/*, and the Trainer stages' eval_* metrics, which transformers' TensorBoard callback logs as
# eval/*) are sparse: a handful of points, each the figure of a whole held-out set. They are drawn as points joined by
# a thin line, never smoothed: smoothing a handful of points drags each towards the ones before it (at 0.6, DPO's last
# held-out accuracy of 0.72 was drawn near 0.45). Every other series is a training series, logged at every step.
SPARSE_PREFIX = "eval/"
SPARSE_MARKER_SIZE = 4  # points, as matplotlib's markersize
# A series' 95% interval is logged beside it as <tag>_low and <tag>_high (band_tags); the chart shades it, and
# TensorBoard's scalar tab shows the bounds next to the series, sorted by name.
BAND_SUFFIXES = ("_low", "_high")
BAND_ALPHA = 0.2  # the band's opacity over the series' colour


def tensorboard_run(stage: str, continued: str | Path | None = None) -> Path:
    """tensorboard/<stage>/<YYYY-mm-dd HH-MM-SS>, one folder per run as the original, and point the Trainer's
    TensorBoard callback at it: transformers 5 reads TENSORBOARD_LOGGING_DIR (TrainingArguments.logging_dir is
    gone). `continued`, a run folder that exists, is reused instead (a resumed run continues its curves).

    Every process calls this under accelerate launch; the main process creates the folder, exclusively, with a suffix
    if a run started in the same second already has the name, and every process gets its name.
    """
    state = PartialState()
    run_dir = Path(continued) if continued is not None and Path(continued).is_dir() else None
    if run_dir is None and state.is_main_process:
        check_tensorboard_folder(stage)
        stamp = paths.TENSORBOARD_ROOT / stage / time.strftime("%Y-%m-%d %H-%M-%S")
        for attempt in itertools.count(1):
            run_dir = stamp if attempt == 1 else stamp.with_name(f"{stamp.name}-{attempt}")
            try:
                run_dir.mkdir(parents=True)  # fails if the folder exists: two runs never share one
                break
            except FileExistsError:
                continue
    if state.num_processes > 1:
        run_dir = Path(broadcast_object_list([run_dir])[0])
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir)
    return run_dir


def check_tensorboard_folder(stage: str | None = None) -> None:
    """Refuse a tensorboard (or tensorboard/<stage>) that is there but is not a folder (a file, or a link to none),
    where the run could not make its own folder: tensorboard_run's mkdir would raise NotADirectoryError, or, under a
    link to nothing, FileExistsError at every name it tries, forever. Checked before any model loads, by
    resuming.check_trainer_run (tensorboard) and train_ppo.py (both), and again where the folder is made."""
    for folder in [paths.TENSORBOARD_ROOT] + ([paths.TENSORBOARD_ROOT / stage] if stage else []):
        if os.path.lexists(folder) and not folder.is_dir():
            what = "a link to nothing" if folder.is_symlink() and not folder.exists() else "a file"
            raise errors.PipelineError(
                f"{folder.absolute()} is {what}, not a folder, so the run cannot keep its TensorBoard scalars there "
                f"({paths.TENSORBOARD_ROOT}/<stage>/<time>, in the folder it is started from). Move or rename it, "
                "then run again."
            )


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a TensorBoard run logged, as tag -> [(step, value), ...].

    Points a resumed run replaced (train_ppo.py's purge_step) are left out; the reader's warning that it left them
    out, worded as if TensorFlow had crashed ("Detected out of order event.step ... Purging expired events"), is
    filtered here, where that purge is what was asked for.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def not_a_purge(record: logging.LogRecord) -> bool:
        return "Purging expired events" not in record.getMessage()

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    reader_log = logging.getLogger("tensorboard")
    reader_log.addFilter(not_a_purge)
    try:
        events.Reload()
    finally:
        reader_log.removeFilter(not_a_purge)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def smoothed(values: list[float], weight: float = CHART_SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so that the first points are not pulled
    towards 0 (tensorboard/plugins/scalar/tf_scalar_dashboard, the "Smoothing" slider)."""
    average, result = 0.0, []
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        result.append(average / (1 - weight**count))
    return result


def curves_note(run_dir: str | Path, tags: list[str], title: str, report_to: list[str], xlabel: str = "step") -> str:
    """ "; curves in <chart>" for a training stage's last line (plot_scalars), or "" where the run logged nothing to
    TensorBoard (--report_to without tensorboard): there are no points to chart, and the model is saved already."""
    return f"; curves in {plot_scalars(run_dir, tags, title, xlabel)}" if "tensorboard" in report_to else ""


def band_tags(tag: str) -> tuple[str, str]:
    """The tags of the lower and upper bounds of `tag`'s 95% interval, which a run logs beside it."""
    return tag + BAND_SUFFIXES[0], tag + BAND_SUFFIXES[1]


def is_sparse(tag: str) -> bool:
    """Whether `tag` is an evaluation's series (SPARSE_PREFIX), drawn as points rather than smoothed."""
    return tag.startswith(SPARSE_PREFIX)


def band(scalars: dict[str, list[tuple[int, float]]], tag: str) -> tuple[list[int], list[float], list[float]] | None:
    """The steps and the lower and upper bounds of `tag`'s interval, at the steps that logged both; None where the
    run logged no bounds for it."""
    low_tag, high_tag = band_tags(tag)
    if low_tag not in scalars or high_tag not in scalars:
        return None
    lows, highs = dict(scalars[low_tag]), dict(scalars[high_tag])
    steps = sorted(lows.keys() & highs.keys())
    return steps, [lows[step] for step in steps], [highs[step] for step in steps]


def panel_tags(scalars: dict[str, list[tuple[int, float]]], tags: list[str]) -> list[str]:
    """The tags of `tags` that get a panel: those the run logged, but the bounds of a series' interval, which are
    drawn as that series' band."""
    bounds = {bound for tag in scalars if band(scalars, tag) for bound in band_tags(tag)}
    return [tag for tag in tags if tag in scalars and tag not in bounds]


def draw_scalars(scalars: dict[str, list[tuple[int, float]]], tags: list[str], title: str, xlabel: str = "step"):
    """The chart of `scalars` (tag -> [(step, value), ...]) as a matplotlib Figure, a panel for each of panel_tags, at
    most CHART_COLUMNS a row so that it reads at README width. A training series is drawn faintly, every value, with
    its smoothed line over it; an evaluation's (is_sparse) as its values, points joined by a thin line, with its band
    where the run logged one."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    tags = panel_tags(scalars, tags)
    rows = math.ceil(len(tags) / CHART_COLUMNS)
    columns = math.ceil(len(tags) / rows)  # rows filled evenly: 4 panels are 2 x 2, not 3 + 1
    figure = Figure(figsize=(CHART_PANEL_SIZE[0] * columns, CHART_PANEL_SIZE[1] * rows), layout="constrained")
    panels = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, tag in zip(panels, tags):
        steps, values = zip(*scalars[tag])
        if is_sparse(tag):
            (line,) = axes.plot(steps, values, marker="o", markersize=SPARSE_MARKER_SIZE, linewidth=0.8)
            if interval := band(scalars, tag):
                axes.fill_between(*interval, color=line.get_color(), alpha=BAND_ALPHA, linewidth=0)
        else:
            (raw,) = axes.plot(steps, values, alpha=0.3, linewidth=1)
            axes.plot(steps, smoothed(values), color=raw.get_color(), linewidth=1.8)
        axes.set_title(tag, fontsize="medium")
        axes.set_xlabel(xlabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and updates are whole numbers
        axes.grid(alpha=0.3)
    for axes in panels[len(tags) :]:  # the empty places of a last row that is not full
        axes.remove()
    figure.suptitle("\n".join([title, *chart_key(scalars, tags)]))
    return figure


def chart_key(scalars: dict[str, list[tuple[int, float]]], tags: list[str]) -> list[str]:
    """The lines under a chart's title that say how its panels (`tags`) draw their series."""
    lines = []
    if not all(is_sparse(tag) for tag in tags):
        lines.append(f"faint: every logged value; solid: smoothed as in TensorBoard ({CHART_SMOOTHING})")
    if any(is_sparse(tag) for tag in tags):
        shaded = "; shaded: its 95% interval" if any(band(scalars, tag) for tag in tags) else ""
        lines.append(f"points: each held-out evaluation, not smoothed{shaded}")
    return lines


def plot_scalars(run_dir: str | Path, tags: list[str], title: str, xlabel: str = "step") -> Path:
    """Chart the given scalars of a TensorBoard run (draw_scalars) into <run_dir>/<stage>.png, beside the run's
    events, and return its path (tags the run lacks are skipped)."""
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    if not panel_tags(scalars, tags):
        raise errors.PipelineError(f"the TensorBoard run {run_dir} logged none of the scalars to chart.")
    figure = draw_scalars(scalars, tags, title, xlabel)
    out_path = run_dir / f"{run_dir.parent.name}.png"
    with outputs.atomic_file(out_path) as temporary:
        figure.savefig(temporary, dpi=CHART_DPI)
    return out_path
