"""PPO's held-out evaluation as it reports: the scores' 95% intervals logged beside them and printed in the eval line,
and the reward-hacking alarm's start that a resumed run reads back from its checkpoint."""

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from hfppo import charts, figures, hacking, ppo_monitor, trackers

QUESTIONS = 35  # the tiny preset's held-out questions


def answers(answers_per_question: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-answer reward-model and judge scores of QUESTIONS questions, question by question."""
    generator = torch.Generator().manual_seed(seed)
    count = QUESTIONS * answers_per_question
    return {
        "eval/score": 2.5 + torch.randn(count, generator=generator),
        "eval/judge_score": torch.randint(-1, 2, (count,), generator=generator).float(),
    }


@pytest.mark.parametrize("answers_per_question", [1, 3])
def test_an_evaluation_logs_95_percent_bounds_that_hold_its_mean(answers_per_question):
    scores = answers(answers_per_question)
    logged = ppo_monitor.with_intervals(scores, QUESTIONS)
    assert sorted(logged) == sorted(
        f"{tag}{suffix}" for tag in ppo_monitor.INTERVAL_TAGS for suffix in ("", "_low", "_high")
    )
    for tag, values in scores.items():
        # every question has as many answers, so the mean over questions is the mean over answers (float64: 1e-12)
        assert math.isclose(logged[tag], values.double().mean().item(), rel_tol=1e-12)
        assert logged[f"{tag}_low"] < logged[tag] < logged[f"{tag}_high"], tag


def test_a_questions_answers_are_resampled_together():
    """Three identical answers to each question are one question's figure, not three draws: the interval is the one
    of a single answer each (a bootstrap over the 105 answers would be about 1.7 times narrower)."""
    single = answers(1)
    tripled = {tag: values.repeat_interleave(3) for tag, values in single.items()}  # question by question
    assert ppo_monitor.with_intervals(tripled, QUESTIONS) == ppo_monitor.with_intervals(single, QUESTIONS)


EVALUATION = {
    "update": 20, "eval/score": 2.885, "eval/score_low": 2.7012, "eval/score_high": 3.0618,
    "eval/judge_score": 0.06, "eval/judge_score_low": -0.142, "eval/judge_score_high": 0.314,
    "eval/judged_rude": 0.0857, "eval/kl": 2.903, "eval/answer_length": 13.3, "eval/finished": 1.0,
}  # fmt: skip


def test_the_eval_line_carries_the_scores_intervals():
    assert figures.ppo_eval_line(EVALUATION) == (
        "eval at update 20: score +2.885 [+2.701, +3.062], judge +0.06 [-0.14, +0.31] (0.09 judged rude), "
        "KL 2.903, 13.3 tokens, 1.00 finished"
    )
    # a report saved before the intervals (docs/reports/ppo_evals.json until make figures reruns) reads as printed
    before = {tag: value for tag, value in EVALUATION.items() if not tag.endswith(("_low", "_high"))}
    assert figures.ppo_eval_line(before) == (
        "eval at update 20: score +2.885, judge +0.06 (0.09 judged rude), KL 2.903, 13.3 tokens, 1.00 finished"
    )


class RunLog:
    """A run's trackers that keep what they are given."""

    def __init__(self):
        self.scalars, self.texts = [], []

    def log(self, values: dict, step: int) -> None:
        self.scalars.append((step, values))

    def text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((step, tag))


def test_evaluate_and_log_logs_and_prints_the_intervals(monkeypatch, capsys):
    """What evaluate measures (faked here: it samples from a model) is logged with its bounds and printed with them."""
    scores = answers(1)
    metrics = ppo_monitor.with_intervals(scores, QUESTIONS) | {
        "eval/judged_rude": 0.2, "eval/kl": 0.5, "eval/answer_length": 12.0, "eval/finished": 1.0,
    }  # fmt: skip
    samples = {"answer": ["好"] * QUESTIONS, "score": scores["eval/score"].tolist()}
    samples["judge"] = scores["eval/judge_score"].tolist()
    monkeypatch.setattr(ppo_monitor, "evaluate", lambda *args: (dict(metrics), samples))
    rows = Dataset.from_dict({"question": [f"问题{i}" for i in range(QUESTIONS)]})
    config = SimpleNamespace(hacking_length_drop=hacking.LENGTH_DROP)
    run = ppo_monitor.Evaluation(None, None, None, [[1]] * QUESTIONS, rows, config, None, RunLog())
    ppo_monitor.evaluate_and_log(3, run)

    ((step, logged),) = run.run_log.scalars
    assert step == 3 and logged == metrics | {"eval/hacking_signs": 0}
    line = capsys.readouterr().out.strip()
    low, high = metrics["eval/score_low"], metrics["eval/score_high"]
    assert line.startswith(f"eval at update 3: score {metrics['eval/score']:+.3f} [{low:+.3f}, {high:+.3f}], judge ")
    assert run.start == hacking.HeldOut.of(scores["eval/score"], scores["eval/judge_score"], QUESTIONS, 12.0, 1.0)


START = hacking.HeldOut.of(torch.linspace(2, 3, QUESTIONS), torch.zeros(QUESTIONS), QUESTIONS, 17.7, 0.97)


def saved_progress(start: hacking.HeldOut | None) -> dict:
    """A periodic checkpoint's progress.json as a resumed run reads it, with the alarm's start `start`."""
    logs = SimpleNamespace(tensorboard_run=None, evaluation=SimpleNamespace(start=start))
    return json.loads(json.dumps(ppo_monitor.checkpoint_progress({"batch_size": 16}, 2, logs)))


def test_a_resumed_run_compares_with_the_start_its_checkpoint_saved():
    assert ppo_monitor.saved_alarm_start(saved_progress(START), QUESTIONS) == (START, None)
    assert ppo_monitor.saved_alarm_start(saved_progress(START), 0) == (START, None)  # kept for the next checkpoints
    assert ppo_monitor.saved_alarm_start(saved_progress(None), QUESTIONS) == (None, None)


@pytest.mark.parametrize(
    "saved, why",
    [
        (
            {"score": 2.3, "score_error": 0.1, "judge": 0.03, "length": 17.7, "finished": 0.97},
            "holds means only (saved before the alarm compared answer by answer)",
        ),
        (
            dataclasses.asdict(START),
            f"answered {QUESTIONS} held-out questions, and this run evaluates 8 (--num_eval_questions)",
        ),
    ],
    ids=["a checkpoint from before the paired intervals", "another --num_eval_questions"],
)
def test_a_start_the_run_cannot_compare_with_answer_by_answer_is_left_with_why(saved, why):
    """The alarm then starts at the run's first evaluation: its paired intervals need the same questions."""
    assert ppo_monitor.saved_alarm_start({"update": 2, "eval_start": saved}, 8) == (None, why)


def test_tensorboards_custom_scalars_tab_draws_the_scores_with_their_bands(tmp_path):
    run_log = trackers.start(Accelerator(), ["tensorboard"], "run", {}, tmp_path)
    ppo_monitor.tensorboard_bands(run_log)
    run_log.finish()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    ((layout_event,),) = [events.Tensors(tag) for tag in events.Tags()["tensors"]]
    (category,) = layout_pb2.Layout.FromString(layout_event.tensor_proto.string_val[0]).category
    margins = {chart.title: chart.margin.series[0] for chart in category.chart}
    assert list(margins) == list(ppo_monitor.INTERVAL_TAGS)
    for tag, series in margins.items():
        assert (series.value, series.lower, series.upper) == (tag, *charts.band_tags(tag))
