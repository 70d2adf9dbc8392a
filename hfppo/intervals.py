"""95% intervals on the held-out figures: the percentile bootstrap over questions, each question's answers kept
together (Efron & Tibshirani 1993, An Introduction to the Bootstrap, ch. 13), and its paired form for the difference
between two models answering the same questions.

Questions, not answers, are what varies from one evaluation set to another: the K answers to one question share it,
so they are resampled together (a cluster bootstrap). A difference between two models on the same questions is
resampled as one per-question difference, which cancels what the question itself contributes to both: the paired
interval is narrower than the two intervals apart whenever the models' scores on a question go together.
"""

from dataclasses import dataclass

import torch

LEVEL = 0.95
# Efron & Tibshirani (1993, section 19.3) find 1,000 resamples enough for a percentile interval's ends; twice that
# keeps the ends' own sampling error under a twentieth of the interval's width for the comparison's sizes.
RESAMPLES = 2000
# One seed for every figure: the same resampled questions for every method and figure, so intervals are comparable
# and a run's report is reproducible.
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over questions and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    @property
    def sign(self) -> int:
        """+1 when the interval lies above 0, -1 below, 0 when it holds 0: the only verdicts it supports."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def by_question(values: torch.Tensor, questions: int) -> torch.Tensor:
    """Answers' values laid out question by question (each question's K answers one after another), as
    [questions, K]."""
    if values.numel() % questions:
        raise ValueError(f"{values.numel()} values do not split evenly over {questions} questions")
    return values.reshape(questions, -1)


def question_means(values: torch.Tensor) -> torch.Tensor:
    """Each question's mean over its answers, of `values` ([questions, K], or [questions]), in float64."""
    return values.double().reshape(len(values), -1).mean(dim=1)


def resampled_means(values: torch.Tensor, resamples: int = RESAMPLES, seed: int = SEED) -> torch.Tensor:
    """The mean over questions of `values` ([questions, K], or [questions]) in each of `resamples` bootstrap
    resamples of the questions, drawn with replacement from a generator seeded with `seed`."""
    means = question_means(values)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(means), (resamples, len(means)), generator=generator)
    return means[picks].mean(dim=1)


def interval(values: torch.Tensor, seed: int = SEED) -> Interval:
    """The mean of `values` ([questions, K], or [questions]) over its questions, and its 95% percentile bootstrap
    interval."""
    means = resampled_means(values, seed=seed)
    tail = (1 - LEVEL) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype)).tolist()
    return Interval(question_means(values).mean().item(), low, high)


def paired(later: torch.Tensor, earlier: torch.Tensor, seed: int = SEED) -> Interval:
    """The mean of `later` - `earlier` (the same questions, [questions, K] each) and its paired 95% interval: the
    per-question differences of the two models' means, resampled as one."""
    if later.shape[0] != earlier.shape[0]:
        raise ValueError(f"paired intervals need the same questions: {later.shape[0]} against {earlier.shape[0]}")
    return interval(question_means(later) - question_means(earlier), seed)
