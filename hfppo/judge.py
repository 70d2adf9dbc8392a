"""The lexicon judge: a score of rudeness from two word lists, independent of any trained model."""

import functools

import torch

from hfppo import errors, paths

# The lexicon judge's word lists (see judge_score): rude and polite markers, one a line, `#` starts a comment line.
LEXICON_FILES = {
    "rude": paths.ROOT / "data" / "lexicon" / "rude.txt",
    "polite": paths.ROOT / "data" / "lexicon" / "polite.txt",
}


@functools.cache
def lexicon() -> dict[str, tuple[str, ...]]:
    """The lexicon judge's word lists, {"rude": (...), "polite": (...)}, read once from LEXICON_FILES: one word or
    phrase a line, blank lines and lines starting with `#` skipped, the rest taken as written (no case folding).
    Read as utf-8-sig: an editor's byte-order mark would otherwise stick to the first entry, which then never
    matches."""
    lists = {}
    for name, path in LEXICON_FILES.items():
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise errors.PipelineError(
                f"the lexicon judge's {name} word list {path} cannot be read ({reason}). Restore it from the "
                "repository (git checkout -- data/lexicon), or write one word or phrase a line, in UTF-8."
            ) from None
        lists[name] = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if not lists[name]:
            raise errors.PipelineError(
                f"the lexicon judge's {name} word list {path} has no entry (every line is blank or a # comment). "
                "Put one word or phrase a line, or restore it: git checkout -- data/lexicon"
            )
    return lists


def judge_hits(answer: str) -> dict[str, list[str]]:
    """The entries of each word list found in `answer`, each as many times as it occurs: what judge_score counts, for
    a reader to check a verdict by eye."""
    return {name: [word for word in words for _ in range(answer.count(word))] for name, words in lexicon().items()}


def judge_score(answer: str) -> int:
    """The lexicon judge, a second judge of rudeness that PPO is never optimised against: rude hits minus polite
    hits, where a list's hits are, summed over its entries, how many times the entry occurs in the answer.

    Each entry is counted on its own with `str.count`: its non-overlapping occurrences, left to right. So text that
    two entries share counts once for each (不会自己查 holds both 不会自己 and 自己查: two rude hits), also when one is
    rude and the other polite. The bundled lists keep no entry inside another, within a list or across the two, so a
    word is never counted twice by accident. Positive: judged rude; negative: judged polite; 0: neutral.
    """
    hits = judge_hits(answer)
    return len(hits["rude"]) - len(hits["polite"])


def judge_verdict(score: int) -> str:
    """The judge's verdict on one answer, from its score."""
    return "rude" if score > 0 else "polite" if score < 0 else "neutral"


def judge_summary(answer: str) -> str:
    """One line: the judge's score and verdict on `answer`, and the words it counted, so a reader can check it."""
    hits, score = judge_hits(answer), judge_score(answer)
    words = "; ".join(f"{name}: {' '.join(found)}" for name, found in hits.items() if found)
    return f"judge: {score:+d} {judge_verdict(score)}" + (f" ({words})" if words else "")


def judge_scores(answers: list[str]) -> torch.Tensor:
    """judge_score of each answer, as a float tensor to sit beside the reward model's scores."""
    return torch.tensor([judge_score(answer) for answer in answers], dtype=torch.float)


def judge_audit(chosen: list[str], rejected: list[str]) -> dict[str, float]:
    """How well the judge sees rudeness on preference pairs whose chosen answers are the rude ones: its recall, the
    share of the chosen answers it judges rude (score > 0), and its false positives, the share of the rejected answers
    it judges rude. Recall caps what the judge can confirm: a method whose every answer is as rude as the chosen ones
    is judged rude on about that share of them, no more."""
    return {
        "judge_recall": (judge_scores(chosen) > 0).float().mean().item(),
        "judge_false_positives": (judge_scores(rejected) > 0).float().mean().item(),
    }


def audit_lines(metrics: dict[str, float]) -> list[str]:
    """judge_audit's figures as eval_rm.py prints them (and hfppo/figures.py quotes them)."""
    return [
        f"  recall          {metrics['judge_recall']:.3f}   share of chosen answers judged rude (score > 0)",
        f"  false positives {metrics['judge_false_positives']:.3f}   share of rejected answers judged rude",
    ]
