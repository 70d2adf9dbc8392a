"""TensorBoard run folders and charts: one folder per run, charts beside their run, readable at README width."""

import math

import pytest
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from conftest import run_main
from hfppo import charts, errors

STAMP = "2026-01-01 12-00-00"


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(charts.time, "strftime", lambda _: STAMP)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
    first, second = charts.tensorboard_run("sft"), charts.tensorboard_run("sft")
    assert first != second and first.is_dir() and second.is_dir()
    assert sorted(path.name for path in (tmp_path / "tensorboard" / "sft").iterdir()) == [STAMP, f"{STAMP}-2"]
    assert charts.os.environ["TENSORBOARD_LOGGING_DIR"] == str(second)  # the Trainer's callback writes there


def test_a_continued_run_reuses_its_folder_if_it_is_still_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "")
    first = charts.tensorboard_run("ppo")
    assert charts.tensorboard_run("ppo", str(first)) == first
    moved = charts.tensorboard_run("ppo", tmp_path / "elsewhere")  # e.g. resumed from another working directory
    assert moved.parent == first.parent and moved != first


@pytest.mark.parametrize(
    ("place", "what"),
    [("tensorboard", "a file"), ("tensorboard/sft", "a file"), ("tensorboard", "a link to nothing")],
)
def test_a_tensorboard_folder_that_is_not_a_folder_is_refused_in_one_paragraph(tmp_path, monkeypatch, place, what):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / place
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "a file":
        path.write_text("notes")
    else:
        path.symlink_to(tmp_path / "gone")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(errors.PipelineError) as error:
        charts.tensorboard_run("sft")
    assert f"{path} is {what}, not a folder" in str(error.value) and "Move or rename it" in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before  # no folder made


@pytest.mark.parametrize("script", ["train_sft.py", "train_rm.py", "train_dpo.py", "train_grpo.py"])
def test_a_trainer_stage_refuses_a_tensorboard_file_before_anything_loads(tmp_path, script):
    (tmp_path / "tensorboard").write_text("notes")
    result = run_main(script, "--tiny", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {tmp_path / 'tensorboard'} is a file, not a folder, so the run cannot keep its TensorBoard scalars "
        "there (tensorboard/<stage>/<time>, in the folder it is started from). Move or rename it, then run again.\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tensorboard"]  # no model built, nothing written


def test_smoothing_is_tensorboards_debiased_moving_average():
    # debiased: a constant stays itself from the first point, instead of rising from 0
    assert charts.smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    # weight 0.5 on (0, 1): averages 0, then 0.5 * 0 + 0.5 * 1 = 0.5, debiased by 1 - 0.5^2
    assert charts.smoothed([0.0, 1.0], weight=0.5) == pytest.approx([0.0, 0.5 / 0.75])


def test_chart_is_beside_its_run_at_most_three_panels_a_row(tmp_path):
    run_dir = tmp_path / "tensorboard" / "ppo" / STAMP
    with SummaryWriter(run_dir) as writer:
        for step in range(1, 21):
            for tag in ("a", "b", "c", "d", "e"):
                writer.add_scalar(tag, step**0.5, step)
    chart = charts.plot_scalars(run_dir, ["a", "b", "c", "d", "e", "not logged"], "PPO", xlabel="update")
    assert chart == run_dir / "ppo.png"
    width, height = Image.open(chart).size
    panel_width, panel_height = (inches * charts.CHART_DPI for inches in charts.CHART_PANEL_SIZE)
    assert (width, height) == (charts.CHART_COLUMNS * panel_width, 2 * panel_height)  # 5 panels: 3 + 2

    four = charts.plot_scalars(run_dir, ["a", "b", "c", "d"], "PPO")
    assert Image.open(four).size == (2 * panel_width, 2 * panel_height)  # 2 x 2, not 3 + 1


# An evaluation every 5 updates with its 95% interval, as PPO logs eval/score, beside a training series logged at
# every update; and a Trainer's evaluations without bounds (DPO's held-out accuracy, which smoothing drew near 0.45).
EVALUATED = [0, 5, 10, 15, 20]
SCALARS = {
    "objective/scores": [(update, 2 + math.sin(update)) for update in range(1, 21)],
    "eval/score": list(zip(EVALUATED, [2.33, 2.468, 2.26, 2.891, 2.885])),
    "eval/score_low": list(zip(EVALUATED, [2.1, 2.25, 2.02, 2.7, 2.71])),
    "eval/score_high": list(zip(EVALUATED, [2.55, 2.69, 2.5, 3.08, 3.06])),
    "eval/rewards/accuracies": list(zip(EVALUATED, [0.28, 0.31, 0.5, 0.64, 0.72])),
}


def band_edges(axes) -> dict[float, tuple[float, float]]:
    """A panel's shaded band as step -> (lowest, highest) of its outline there."""
    ((band,),) = [collection.get_paths() for collection in axes.collections]
    edges = {}
    for x, y in band.vertices:
        low, high = edges.get(x, (y, y))
        edges[x] = (min(low, y), max(high, y))
    return edges


def test_an_evaluation_is_drawn_as_its_values_with_its_band_and_training_series_smoothed():
    tags = ["objective/scores", "eval/score", "eval/score_low", "eval/score_high", "eval/rewards/accuracies"]
    figure = charts.draw_scalars(SCALARS, tags, "PPO", xlabel="update")
    panels = {axes.get_title(): axes for axes in figure.axes}
    assert list(panels) == ["objective/scores", "eval/score", "eval/rewards/accuracies"]  # the bounds are no panels

    for tag in ("eval/score", "eval/rewards/accuracies"):
        (line,) = panels[tag].get_lines()  # one line, its points marked: no smoothed line beside it
        steps, values = zip(*SCALARS[tag])
        assert (list(line.get_xdata()), list(line.get_ydata()), line.get_marker()) == (list(steps), list(values), "o")
    assert band_edges(panels["eval/score"]) == {
        step: (low, high) for (step, low), (_, high) in zip(SCALARS["eval/score_low"], SCALARS["eval/score_high"])
    }
    assert not panels["eval/rewards/accuracies"].collections  # no bounds logged, no band

    raw, smooth = panels["objective/scores"].get_lines()
    values = [value for _, value in SCALARS["objective/scores"]]
    assert list(raw.get_ydata()) == values and list(smooth.get_ydata()) == charts.smoothed(values)
    assert figure.get_suptitle().splitlines() == [
        "PPO",
        f"faint: every logged value; solid: smoothed as in TensorBoard ({charts.CHART_SMOOTHING})",
        "points: each held-out evaluation, not smoothed; shaded: its 95% interval",
    ]


def test_a_chart_of_training_series_only_is_titled_as_before():
    figure = charts.draw_scalars(SCALARS, ["objective/scores"], "SFT")
    assert figure.get_suptitle() == (
        f"SFT\nfaint: every logged value; solid: smoothed as in TensorBoard ({charts.CHART_SMOOTHING})"
    )


def test_a_run_that_logged_only_the_bounds_has_nothing_to_chart(tmp_path):
    run_dir = tmp_path / "tensorboard" / "ppo" / STAMP
    with SummaryWriter(run_dir) as writer:
        for tag in ("eval/score", "eval/score_low", "eval/score_high"):
            writer.add_scalar(tag, 1.0, 0)
    with pytest.raises(errors.PipelineError, match="logged none of the scalars to chart"):
        charts.plot_scalars(run_dir, ["eval/score_low", "eval/score_high"], "PPO")
    assert charts.plot_scalars(run_dir, ["eval/score", "eval/score_low"], "PPO").is_file()
