"""Every figure of the demo that README.md and docs/ quote is what its committed report in docs/reports renders
(hfppo/figures.py): a figure edited by hand, or a report replaced without `make figures`, fails here."""

import json
import re

import pytest

from hfppo import errors, figures, paths

# The blocks each page must hold, so that deleting a marker cannot pass for an up-to-date page.
EXPECTED_BLOCKS = {
    "README.md": ["compare-verdicts", "compare-table", "ppo-summary"],
    "docs/results.md": [
        "demo-transcript",
        "rm-summary",
        "ppo-summary",
        "seed-row",
        "seeds",
        "compare-table-cost",
        "compare-agreement",
    ],
    "docs/ppo.md": ["ppo-run", "from-base"],
    "docs/reward_model.md": ["rm-summary"],
}


def page_text(name: str) -> str:
    return (paths.ROOT / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", figures.PAGES, ids=lambda page: str(page.relative_to(paths.ROOT)))
def test_every_block_on_a_page_is_what_its_report_renders(page):
    stale = figures.stale_blocks(page.read_text(encoding="utf-8"), page)
    assert stale == [], f"{page.relative_to(paths.ROOT)}: blocks {stale} differ from docs/reports; run make figures"


@pytest.mark.parametrize("name, expected", EXPECTED_BLOCKS.items())
def test_the_pages_quote_the_demo_between_markers(name, expected):
    found = [match.group("name") for match in figures.blocks(page_text(name), name)]
    assert found == expected


def test_a_figure_changed_by_hand_is_found_and_rewritten():
    text = page_text("README.md")
    table = next(m for m in figures.blocks(text, "README.md") if m.group("name") == "compare-table")
    first_digit = re.search(r"\d", table.group("body")).start() + table.start("body")
    changed_digit = "1" if text[first_digit] != "1" else "2"
    edited = text[:first_digit] + changed_digit + text[first_digit + 1 :]
    assert figures.stale_blocks(edited, "README.md") == ["compare-table"]
    assert figures.rendered(edited, "README.md") == text


def test_a_new_report_changes_the_blocks_that_quote_it(tmp_path):
    for name in [*figures.COPIED, figures.PPO_EVALS]:
        (tmp_path / name).write_text((figures.REPORTS_DIR / name).read_text(encoding="utf-8"), encoding="utf-8")
    report = figures.load("compare.json", tmp_path)
    report["metrics"]["ppo"]["mean_reward"] += 1
    report["metrics"]["ppo"]["intervals"]["mean_reward"]["mean"] += 1  # the tables show it with its interval
    report["metrics"]["ppo"]["vs_start"]["mean_reward"]["mean"] += 1  # and the summary its gain over SFT
    figures.write(tmp_path / "compare.json", report)
    stale = figures.stale_blocks(page_text("README.md"), "README.md", tmp_path)
    assert stale == ["compare-verdicts", "compare-table", "ppo-summary"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<!-- figures:compare-table -->\n| a |\n", "line 1: <!-- figures:compare-table --> is not closed"),
        ("x\n<!-- figures:no-such -->\n<!-- /figures -->\n", "line 2: no block is named 'no-such'"),
    ],
)
def test_a_broken_marker_is_named_with_its_line(text, problem):
    with pytest.raises(errors.PipelineError, match=re.escape(f"page.md, {problem}")):
        figures.rendered(text, "page.md")


def test_a_missing_report_says_to_run_make_figures(tmp_path):
    with pytest.raises(errors.PipelineError, match=r"compare\.json cannot be read .* Run make figures"):
        figures.rendered("<!-- figures:compare-table -->\n<!-- /figures -->\n", "page.md", tmp_path)


def test_collect_keeps_the_quoted_answers_and_ppos_evaluations(tmp_path):
    """A demo folder's reports copied without the project's folder in their paths, the comparison's answers cut to
    the quoted ones, PPO's eval/* scalars read."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    for name, source in figures.COPIED.items():
        (run / source).parent.mkdir(parents=True, exist_ok=True)
        report = (
            {"answers": [{"question": str(i)} for i in range(5)]}
            if name == "compare.json"
            else {"pairs": 3, "dataset": f"{paths.ROOT}/data/style_pairs.jsonl"}
        )
        (run / source).write_text(json.dumps(report), encoding="utf-8")
    writer = SummaryWriter(run / "tensorboard" / "ppo" / "2026-01-01 12-00-00")
    for update, score in [(0, 0.5), (10, 1.5)]:
        for tag in ["eval/score", "eval/kl", "loss/policy"]:
            writer.add_scalar(tag, score, update)
    writer.close()
    figures.collect(run, tmp_path / "reports")
    copied = figures.load("compare.json", tmp_path / "reports")
    assert copied["answers"] == [{"question": str(i)} for i in range(figures.QUOTED_QUESTIONS)]
    assert figures.load("rm.json", tmp_path / "reports") == {"pairs": 3, "dataset": "data/style_pairs.jsonl"}
    evaluations = figures.load(figures.PPO_EVALS, tmp_path / "reports")["evaluations"]
    assert evaluations == [
        {"update": 0, "eval/kl": 0.5, "eval/score": 0.5},
        {"update": 10, "eval/kl": 1.5, "eval/score": 1.5},
    ]
