"""The reward-model audit: whether the score follows the style the pairs teach or a shortcut a policy can take
instead (shorter answers, non-answers), measured on the evaluation pairs and a fixed set of probe answers."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hfppo import errors, paths

# Probe answers, each with its kind and the side a model that learned the style ranks it on: non-answers, a one-word
# rude answer, short and long polite and rude answers, an answer in another language. Written for the default task
# (Chinese, rude chosen); --probes_file takes another.
PROBES_FILE = paths.ROOT / "data" / "rm_probes.jsonl"
SIDES = ("chosen", "rejected")
NON_ANSWER = "non-answer"  # the kind the verdict reads: an answer that says nothing must not pay
# A probe answer carries no question, so each is scored after this many questions of the evaluation set and averaged:
# one question's score would be partly that question's.
PROBE_QUESTIONS = 8
# Verdict thresholds. A Pearson correlation of |r| >= 0.3 between score and length within one side is "moderate"
# (Cohen 1988): length then explains a tenth of the score's spread among answers of one style. An accuracy gap of
# 0.15 between the pairs whose chosen answer is the longer and those whose chosen answer is the shorter is about two
# standard errors of a 0.85 accuracy measured on 20 pairs (sqrt(0.85 x 0.15 / 20) = 0.08).
LENGTH_CORRELATION = 0.3
LENGTH_ACCURACY_GAP = 0.15


@dataclass
class Audit:
    """What eval_rm.py prints under "Audit" and writes to the metrics file's "audit" key."""

    length_correlation_chosen: float | None  # Pearson r of score and length in tokens, within the chosen answers
    length_correlation_rejected: float | None  # the same within the rejected answers
    accuracy_chosen_longer: float | None  # accuracy on the pairs whose chosen answer has more tokens
    pairs_chosen_longer: int
    accuracy_chosen_shorter: float | None  # accuracy on the pairs whose chosen answer has fewer tokens
    pairs_chosen_shorter: int
    median_chosen: float
    median_rejected: float
    probes: list[dict]  # {"kind", "side", "answer", "score"}: the score the mean over PROBE_QUESTIONS questions
    verdicts: list[str]  # empty: no shortcut found

    def to_json(self) -> dict:
        return asdict(self)


def load_probes(path: str | Path) -> list[dict]:
    """The probe answers of a JSON Lines file, one {"kind": ..., "side": "chosen" or "rejected", "answer": ...} a
    line: side is where a reward model that learned the style scores the answer."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise errors.PipelineError(
            f"--probes_file {path} cannot be read ({error}). Pass a UTF-8 JSON Lines file of "
            '{"kind": ..., "side": ..., "answer": ...} objects, or --audit false to skip the audit.'
        ) from error
    probes = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            probe = json.loads(line)
        except json.JSONDecodeError as error:
            raise errors.PipelineError(f"--probes_file {path}: line {number} is not valid JSON ({error}).") from error
        if not (
            isinstance(probe, dict)
            and all(isinstance(probe.get(key), str) and probe[key] for key in ("kind", "answer"))
            and probe.get("side") in SIDES
        ):
            raise errors.PipelineError(
                f'--probes_file {path}: line {number} is not an object with a non-empty "kind" and "answer" and a '
                f'"side" of {" or ".join(map(repr, SIDES))}: {line.strip()[:80]}'
            )
        probes.append({key: probe[key] for key in ("kind", "side", "answer")})
    if not probes:
        raise errors.PipelineError(f"--probes_file {path} holds no probe: one JSON object a line, or --audit false.")
    return probes


def correlation(scores: torch.Tensor, lengths: torch.Tensor) -> float | None:
    """Pearson's r of scores and lengths; None where either is constant (or fewer than two), when r is undefined."""
    if len(scores) < 2 or scores.std() == 0 or lengths.float().std() == 0:
        return None
    return torch.corrcoef(torch.stack([scores.float(), lengths.float()]))[0, 1].item()


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor, rows: torch.Tensor) -> float | None:
    return (chosen[rows] > rejected[rows]).float().mean().item() if rows.any() else None


def audit(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    probes: list[dict],
) -> Audit:
    """The audit of a reward model from its scores of the evaluation pairs, their answers' lengths in tokens, and its
    probes already scored (each with a "score")."""
    longer, shorter = chosen_lengths > rejected_lengths, chosen_lengths < rejected_lengths
    report = Audit(
        length_correlation_chosen=correlation(chosen, chosen_lengths),
        length_correlation_rejected=correlation(rejected, rejected_lengths),
        accuracy_chosen_longer=accuracy(chosen, rejected, longer),
        pairs_chosen_longer=int(longer.sum()),
        accuracy_chosen_shorter=accuracy(chosen, rejected, shorter),
        pairs_chosen_shorter=int(shorter.sum()),
        median_chosen=chosen.median().item(),
        median_rejected=rejected.median().item(),
        probes=probes,
        verdicts=[],
    )
    report.verdicts = verdicts(report)
    return report


def verdicts(report: Audit) -> list[str]:
    """One sentence for each shortcut the figures show; none for a model that follows the style."""
    found = []
    within = (report.length_correlation_chosen, report.length_correlation_rejected)
    if all(r is not None and r <= -LENGTH_CORRELATION for r in within):
        found.append(
            f"it prefers shorter answers within each side (r = {within[0]:+.2f} chosen, {within[1]:+.2f} rejected): "
            "PPO against it can gain by cutting answers short."
        )
    if all(r is not None and r >= LENGTH_CORRELATION for r in within):
        found.append(
            f"it prefers longer answers within each side (r = {within[0]:+.2f} chosen, {within[1]:+.2f} rejected): "
            "PPO against it can gain by padding answers."
        )
    longer, shorter = report.accuracy_chosen_longer, report.accuracy_chosen_shorter
    if longer is not None and shorter is not None and abs(longer - shorter) >= LENGTH_ACCURACY_GAP:
        side = "longer" if longer > shorter else "shorter"
        found.append(
            f"it ranks by length: accuracy {longer:.3f} where the chosen answer is the longer, {shorter:.3f} where it "
            f"is the shorter, so it partly learned that the {side} answer is the chosen one."
        )
    non_answers = [probe for probe in report.probes if probe["kind"] == NON_ANSWER]
    if non_answers:
        worst = max(non_answers, key=lambda probe: probe["score"])
        if worst["score"] >= report.median_chosen:
            found.append(
                f"it scores the non-answer {worst['answer']!r} at {worst['score']:+.2f}, at or above the median "
                f"chosen answer ({report.median_chosen:+.2f}): a policy can gain most by saying nothing."
            )
        elif worst["score"] >= report.median_rejected:
            found.append(
                f"it scores the non-answer {worst['answer']!r} at {worst['score']:+.2f}, above the median rejected "
                f"answer ({report.median_rejected:+.2f}): a policy can gain by saying nothing rather than answering "
                "in the rejected style."
            )
    misplaced = [probe for probe in report.probes if misplaced_probe(probe, report)]
    if misplaced:
        found.append(
            f"{len(misplaced)} of {len(report.probes)} probes score on the wrong side of the midpoint between the "
            f"medians ({midpoint(report):+.2f}): "
            + ", ".join(f"{probe['kind']} {probe['answer']!r} {probe['score']:+.2f}" for probe in misplaced)
            + "."
        )
    return found


def midpoint(report: Audit) -> float:
    return (report.median_chosen + report.median_rejected) / 2


def misplaced_probe(probe: dict, report: Audit) -> bool:
    """Whether a probe scores on the other side of the midpoint between the medians than its "side"."""
    return (probe["score"] > midpoint(report)) != (probe["side"] == "chosen")


def print_audit(report: Audit) -> None:
    def r(value):
        return "  -  " if value is None else f"{value:+.2f}"

    def acc(value):
        return "  -  " if value is None else f"{value:.3f}"

    print("\nAudit: does the score follow the style, or a shortcut a policy can take (docs/reward_model.md#audit)?")
    print(
        f"  length correlation  chosen {r(report.length_correlation_chosen)}  rejected "
        f"{r(report.length_correlation_rejected)}   Pearson r of score and length in tokens, within each side"
    )
    print(
        f"  accuracy by length  {acc(report.accuracy_chosen_longer)} where the chosen answer is the longer "
        f"({report.pairs_chosen_longer} pairs), {acc(report.accuracy_chosen_shorter)} where it is the shorter "
        f"({report.pairs_chosen_shorter})"
    )
    print(
        f"  probes, each the mean over {PROBE_QUESTIONS} questions, against the midpoint {midpoint(report):+.2f} "
        f"between the medians (chosen {report.median_chosen:+.2f}, rejected {report.median_rejected:+.2f}):"
    )
    for probe in report.probes:
        answer = probe["answer"] if len(probe["answer"]) <= 24 else probe["answer"][:24] + "..."
        verdict = "WRONG SIDE" if misplaced_probe(probe, report) else "ok"
        print(f"    {probe['kind']:<14} {probe['score']:+.2f}  {probe['side']:<8} {verdict:<10}  {answer}")
    if report.verdicts:
        for verdict in report.verdicts:
            print(f"Shortcut: {verdict}")
        print(
            "Check PPO's answers against it: compare.py reports their length and the lexicon judge. "
            "Remedies: pairs where the chosen answer is the shorter and where a non-answer is rejected; a length "
            "penalty in PPO (docs/reward_model.md#audit)."
        )
    else:
        print(
            "No shortcut found: the score does not follow length, non-answers score below the rejected median, and "
            "every probe falls on its side."
        )
