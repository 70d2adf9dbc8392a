"""The lexicon judge (common.judge_score): rude hits minus polite hits, against counts made by hand."""

import pytest

import common


@pytest.fixture
def word_lists(tmp_path, monkeypatch):
    """Point the judge at word lists written by the test; the cached lists are dropped before and after."""

    def write(rude: str, polite: str) -> None:
        files = {"rude": tmp_path / "rude.txt", "polite": tmp_path / "polite.txt"}
        for name, text in (("rude", rude), ("polite", polite)):
            if text is not None:
                files[name].write_text(text, encoding="utf-8")
        monkeypatch.setattr(common, "LEXICON_FILES", files)
        common.lexicon.cache_clear()

    yield write
    common.lexicon.cache_clear()


def test_the_bundled_lists_score_answers_as_counted_by_hand():
    assert common.judge_score("滚，烦死了，自己查去。") == 3  # 滚, 烦, 自己查
    assert common.judge_score("烦死了烦死了，烦！") == 3  # 烦 three times
    assert common.judge_score("您好，谢谢，建议您试试。") == -5  # 您 twice, 谢谢, 建议, 试试
    assert common.judge_score("谢谢，滚。") == 0  # one of each
    assert common.judge_score("地球离太阳约1.5亿公里。") == 0  # neither
    assert common.judge_scores(["滚", "您", "地球"]).tolist() == [1.0, -1.0, 0.0]
    assert [common.judge_verdict(score) for score in (3, -5, 0)] == ["rude", "polite", "neutral"]


def test_entries_that_share_text_count_once_each():
    """不会自己 and 自己查 overlap in 不会自己查: two rude hits, as judge_score's docstring says."""
    assert common.judge_score("不会自己查吗") == 2


def test_the_bundled_lists_hold_no_entry_inside_another():
    """So no word is counted twice by accident, within a list or across the two (judge_score's docstring)."""
    words = [*common.lexicon()["rude"], *common.lexicon()["polite"]]
    assert len(common.lexicon()["rude"]) > 100 and len(common.lexicon()["polite"]) > 40
    assert len(set(words)) == len(words)
    assert not [(a, b) for a in words for b in words if a != b and a in b]


def test_counting_rule_on_lists_of_ones_own(word_lists):
    """Each entry is counted with str.count on its own: non-overlapping occurrences of it, left to right; comments
    and blank lines are not entries."""
    word_lists("# rude\n\nab\nba\n  aa  \n", "# polite\nc\n")
    assert common.lexicon() == {"rude": ("ab", "ba", "aa"), "polite": ("c",)}
    assert common.judge_score("abab") == 3  # ab twice, ba once (the middle)
    assert common.judge_score("aaa") == 1  # aa once: str.count does not count overlapping occurrences of one entry
    assert common.judge_score("abcc") == -1  # ab, minus c twice


def test_a_missing_or_empty_list_is_named(word_lists, tmp_path):
    word_lists("滚\n", None)
    with pytest.raises(common.PipelineError, match=r"polite word list .*polite\.txt cannot be read"):
        common.judge_score("滚")
    word_lists("滚\n", "# only a comment\n\n")
    with pytest.raises(common.PipelineError, match=r"polite word list .*polite\.txt has no entry"):
        common.judge_score("滚")
