"""The bootstrap intervals (hfppo/intervals.py) on synthetic answers whose answer is known."""

import pytest
import torch

from hfppo import intervals

QUESTIONS, ANSWERS = 35, 4


def scores(seed: int, shift: float = 0.0) -> torch.Tensor:
    """Synthetic [questions, answers] scores: a per-question level plus answer noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(QUESTIONS, ANSWERS, generator=generator) + shift


def test_identical_answers_give_no_difference_and_an_interval_holding_0():
    same = scores(1)
    difference = intervals.paired(same, same.clone())
    assert (difference.mean, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert difference.sign == 0


def test_a_model_better_on_every_question_gives_an_interval_above_0():
    earlier = scores(1)
    later = earlier + 0.1 + torch.rand(QUESTIONS, ANSWERS, generator=torch.Generator().manual_seed(2))
    assert intervals.paired(later, earlier).sign == 1
    assert intervals.paired(earlier, later).sign == -1


def test_the_interval_holds_its_mean_and_lies_within_the_values():
    values = scores(3)
    found = intervals.interval(values)
    question_means = values.double().mean(dim=1)
    assert question_means.min() <= found.low < found.mean < found.high <= question_means.max()
    assert found.mean == pytest.approx(values.double().mean().item(), rel=1e-12)


def test_the_paired_interval_is_narrower_than_the_unpaired_one_when_answers_go_together():
    # Each question's level is shared by both models (a hard question is hard for both), the effect is small.
    level = 3 * torch.randn(QUESTIONS, 1, generator=torch.Generator().manual_seed(4))
    earlier, later = level + scores(5), level + scores(6, shift=0.3)
    paired = intervals.paired(later, earlier)
    # Unpaired: each model's questions resampled apart (other seeds), the difference of the resampled means.
    differences = intervals.resampled_means(later, seed=7) - intervals.resampled_means(earlier, seed=8)
    low, high = torch.quantile(differences, torch.tensor([0.025, 0.975], dtype=differences.dtype)).tolist()
    assert paired.mean == pytest.approx((later.double().mean() - earlier.double().mean()).item(), rel=1e-9)
    assert paired.high - paired.low < (high - low) / 2


def test_the_bootstrap_is_reproducible_under_its_seed_and_moves_with_it():
    values = scores(9)
    assert intervals.interval(values, seed=11) == intervals.interval(values, seed=11)
    assert intervals.interval(values, seed=11) != intervals.interval(values, seed=12)


def test_a_questions_answers_are_resampled_together():
    # Repeating each answer K times adds no information: the interval is the one of a single answer per question.
    # Resampling answers one by one would shrink it by about sqrt(K).
    single = scores(10)[:, :1]
    assert intervals.interval(single.repeat(1, ANSWERS)) == intervals.interval(single)


def test_answers_split_by_question_in_the_order_they_were_sampled():
    flat = torch.arange(QUESTIONS * ANSWERS)
    table = intervals.by_question(flat, QUESTIONS)
    assert table.shape == (QUESTIONS, ANSWERS)
    assert table[1].tolist() == list(range(ANSWERS, 2 * ANSWERS))
    with pytest.raises(ValueError, match="do not split evenly"):
        intervals.by_question(flat[:-1], QUESTIONS)


def test_a_paired_interval_refuses_different_questions():
    with pytest.raises(ValueError, match="the same questions"):
        intervals.paired(scores(1), scores(2)[:-1])
