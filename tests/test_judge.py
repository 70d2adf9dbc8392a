"""The lexicon judge (judge.judge_score): rude hits minus polite hits, against counts made by hand."""

import pytest
import torch

import common
import compare
import eval_rm
from hfppo import errors, figures, judge, paths

# The most a judge may judge rude of the held-out rejected (polite) answers (issue 36).
FALSE_POSITIVE_LIMIT = 0.05


@pytest.fixture
def word_lists(tmp_path, monkeypatch):
    """Point the judge at word lists written by the test; the cached lists are dropped before and after."""

    def write(rude: str, polite: str) -> None:
        files = {"rude": tmp_path / "rude.txt", "polite": tmp_path / "polite.txt"}
        for name, text in (("rude", rude), ("polite", polite)):
            if text is not None:
                files[name].write_text(text, encoding="utf-8")
        monkeypatch.setattr(judge, "LEXICON_FILES", files)
        judge.lexicon.cache_clear()

    yield write
    judge.lexicon.cache_clear()


def test_the_bundled_lists_score_answers_as_counted_by_hand():
    assert judge.judge_score("滚，烦死了，自己查去。") == 3  # 滚, 烦, 自己查
    assert judge.judge_score("烦死了烦死了，烦！") == 3  # 烦 three times
    assert judge.judge_score("您好，谢谢，建议您试试。") == -5  # 您 twice, 谢谢, 建议, 试试
    assert judge.judge_score("谢谢，滚。") == 0  # one of each
    assert judge.judge_score("地球离太阳约1.5亿公里。") == 0  # neither
    assert judge.judge_scores(["滚", "您", "地球"]).tolist() == [1.0, -1.0, 0.0]
    assert [judge.judge_verdict(score) for score in (3, -5, 0)] == ["rude", "polite", "neutral"]


def test_entries_that_share_text_count_once_each():
    """不会自己 and 自己查 overlap in 不会自己查: two rude hits, as judge_score's docstring says."""
    assert judge.judge_score("不会自己查吗") == 2


def test_the_bundled_lists_hold_no_entry_inside_another():
    """So no word is counted twice by accident, within a list or across the two (judge_score's docstring)."""
    words = [*judge.lexicon()["rude"], *judge.lexicon()["polite"]]
    assert len(judge.lexicon()["rude"]) > 100 and len(judge.lexicon()["polite"]) > 40
    assert len(set(words)) == len(words)
    assert not [(a, b) for a in words for b in words if a != b and a in b]


def test_counting_rule_on_lists_of_ones_own(word_lists):
    """Each entry is counted with str.count on its own: non-overlapping occurrences of it, left to right; comments
    and blank lines are not entries."""
    word_lists("# rude\n\nab\nba\n  aa  \n", "# polite\nc\n")
    assert judge.lexicon() == {"rude": ("ab", "ba", "aa"), "polite": ("c",)}
    assert judge.judge_score("abab") == 3  # ab twice, ba once (the middle)
    assert judge.judge_score("aaa") == 1  # aa once: str.count does not count overlapping occurrences of one entry
    assert judge.judge_score("abcc") == -1  # ab, minus c twice


@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["plain", "byte-order mark"])
def test_the_first_entry_counts_with_or_without_a_byte_order_mark(word_lists, tmp_path, bom):
    """An editor that saves UTF-8 with a BOM puts U+FEFF before the first entry; it must not become part of it."""
    word_lists(bom + "滚\n烦\n", bom + "谢谢\n")
    assert judge.lexicon() == {"rude": ("滚", "烦"), "polite": ("谢谢",)}
    assert judge.judge_score("滚，谢谢") == 0


def test_a_missing_or_empty_list_is_named(word_lists, tmp_path):
    word_lists("滚\n", None)
    with pytest.raises(errors.PipelineError, match=r"polite word list .*polite\.txt cannot be read"):
        judge.judge_score("滚")
    word_lists("滚\n", "# only a comment\n\n")
    with pytest.raises(errors.PipelineError, match=r"polite word list .*polite\.txt has no entry"):
        judge.judge_score("滚")


def test_hits_list_what_the_score_counts():
    assert judge.judge_hits("滚，烦死了，谢谢，滚。") == {"rude": ["滚", "滚", "烦"], "polite": ["谢谢"]}
    assert judge.judge_summary("滚，烦死了，谢谢，滚。") == "judge: +2 rude (rude: 滚 滚 烦; polite: 谢谢)"
    assert judge.judge_summary("地球") == "judge: +0 neutral"


def test_the_audit_counts_answers_judged_rude_on_each_side(word_lists):
    """Pairs written with known verdicts: of four chosen answers two score above 0 (滚; 烦 in 烦死了), one ties
    (谢谢，滚) and one holds no entry; of four rejected answers one scores above 0 (滚开). Quarters: exact in
    float32."""
    word_lists("滚\n烦\n", "谢谢\n")
    audit = judge.judge_audit(["滚", "烦死了", "谢谢，滚", "地球"], ["谢谢", "地球", "滚开", "谢谢，烦"])
    assert audit == {"judge_recall": 0.5, "judge_false_positives": 0.25}
    assert judge.audit_lines(audit) == [
        "  recall          0.500   share of chosen answers judged rude (score > 0)",
        "  false positives 0.250   share of rejected answers judged rude",
    ]


def test_the_bundled_lists_judge_few_held_out_polite_answers_rude():
    """On the sample's held-out pairs (the split every stage holds out, common.split_held_out), the bundled lists judge
    at most FALSE_POSITIVE_LIMIT of the polite answers rude, and more of the rude answers than of the polite ones.
    The held-out recall they reach is stated in docs/results.md; entries were read in the training rows only."""
    _, held_out = common.split_held_out(common.load_preference_data(paths.SAMPLE_DATA), paths.DEFAULT_EVAL_FRACTION)
    audit = judge.judge_audit(held_out["chosen"], held_out["rejected"])
    assert audit["judge_false_positives"] <= FALSE_POSITIVE_LIMIT < audit["judge_recall"]


def test_the_published_transcript_quotes_the_audit_as_eval_rm_prints_it():
    """figures.rm_lines, which renders eval_rm.py's output from its report, puts the audit's lines after the judge's
    agreement, where eval_rm.py prints them."""
    report = figures.load("rm.json") | {"judge_recall": 0.5, "judge_false_positives": 0.25}
    lines = figures.rm_lines(report)
    start = next(i for i, line in enumerate(lines) if line.startswith("  agreement ")) + 1
    assert lines[start : start + 2] == judge.audit_lines(report)


def test_eval_rm_reports_the_judge_beside_the_reward_model():
    """Four pairs by hand: the judge ranks pairs 1 and 2 right, ties pair 3 and gets pair 4 wrong; of the three it
    ranks, the reward model ranks 1 and 4 the same way and 2 the other way."""
    tensor = torch.tensor
    metrics = eval_rm.pair_metrics(
        tensor([1.0, 2.0, -1.0, 0.0]),
        tensor([0.0, 3.0, -2.0, 1.0]),
        tensor([2.0, 1.0, 0.0, 0.0]),
        tensor([0.0, 0.0, 0.0, 1.0]),
    )
    assert metrics["accuracy"] == 0.5
    assert (metrics["judge_accuracy"], metrics["judge_ties"]) == (0.5, 0.25)
    assert metrics["judge_ranked_pairs"] == 3 and metrics["judge_rm_agreement"] == pytest.approx(2 / 3)
    assert (metrics["judge_mean_chosen"], metrics["judge_mean_rejected"]) == (0.75, 0.25)
    every_tie = eval_rm.pair_metrics(tensor([1.0]), tensor([0.0]), tensor([1.0]), tensor([1.0]))
    assert every_tie["judge_rm_agreement"] is None and every_tie["judge_ties"] == 1


def test_compare_counts_agreement_on_which_answer_is_ruder():
    """Four questions: the judge ties question 3; of the other three the reward model prefers the answer the judge
    finds ruder on 1 and 4, and the other one on 2."""
    later = {"scores": torch.tensor([2.0, 0.0, 1.0, -1.0]), "judge": torch.tensor([3.0, 2.0, 1.0, 0.0])}
    earlier = {"scores": torch.tensor([1.0, 1.0, 0.0, 0.0]), "judge": torch.tensor([0.0, 0.0, 1.0, 2.0])}
    agreement = compare.judge_agreement(later, earlier, 4)
    assert agreement == {"agreement": pytest.approx(2 / 3), "questions": 3, "ties": 1}


def test_the_verdict_line_says_what_the_judge_says():
    def model(reward, judge, rude):
        return {
            "mean_reward": reward,
            "judge_mean_score": judge,
            "judge_share_rude": rude,
            "mean_answer_tokens": 10.0,
            "share_finished": 1.0,
        }

    def answers(reward, judge):
        # answers of one length, all finished, scores spread over the questions alike: every method's difference from
        # its start is the same on each question, an interval of one point
        wide = torch.tensor([3.0, -3.0] * 2)
        return {
            "scores": reward + wide,
            "judge": judge + wide,
            "lengths": torch.full((4,), 10),
            "stopped": torch.ones(4),
        }

    metrics = {"base": model(-1.5, -0.5, 0.1), "sft": model(1.8, 2.0, 0.9), "ppo": model(2.0, 1.5, 0.8)}
    metrics["ppo"]["mean_kl_to_sft"] = 1.0
    results = {"base": answers(-1.5, -0.5), "sft": answers(1.8, 2.0), "ppo": answers(2.0, 1.5)}
    checks = compare.outcome(metrics, results, 4)
    # PPO's score rose while the judge's fell: the judge disagrees, and the reward-hacking alarm says so too
    assert [passed for passed, _ in checks] == [True, True, True, False, False]
    assert (
        checks[1][1] == "The judge agrees: +2.50 in its score (95% interval [+2.50, +2.50]), judged rude 0.10 -> 0.90."
    )
    assert checks[3][1] == (
        "The judge disagrees: -0.50 in its score (95% interval [-0.50, -0.50]), judged rude 0.90 -> 0.80."
    )
    assert checks[4][1].startswith("PPO: Reward hacking? Against the SFT model: the reward model's score rose")
