"""Score answers with the reward model: how often it prefers the chosen answer, and by how much; beside it, the
lexicon judge (judge.judge_score), a second opinion no stage trained on, how often the two agree, and the judge's
recall and false positives (judge.judge_audit); then an audit (hfppo/audit.py) of whether the score follows the style
or a shortcut PPO can take: shorter answers, non-answers.

    python eval_rm.py                               # the held-out pairs train_rm.py saved: examples, then metrics
    python eval_rm.py --dataset_name my_prefs.jsonl # the same metrics on any preference file or hub dataset
    python eval_rm.py --question 吃了没? --answer 关你屁事 --question 吃了没? --answer 吃过了,谢谢!

On a terminal, the default run then asks for a question and an answer and prints the reward and the judge's verdict,
until Ctrl-D.
Writes the metrics to checkpoint/rm/eval_metrics.json.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

import common
from hfppo import audit, cli, errors, hints, judge, lifecycle, outputs, paths, positions, runtime, tiny

# The reward model's training length: the tiny preset's for a model train_rm.py --tiny wrote.
TINY_PRESET = dict(max_length=tiny.TINY_RM_MAX_LENGTH)


@dataclass
class EvalArguments:
    model_path: str = field(default=str(paths.RM_DIR), metadata={"help": "The reward model checkpoint."})
    tiny: bool = field(
        default=False,
        metadata={"help": "The model was written by train_rm.py --tiny (the checkpoint carries everything else)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Preference data to evaluate on: a local file or folder, or a hub id. Unset: the held-out pairs "
            "train_rm.py saved in the checkpoint, which the model never trained on."
        },
    )
    model_source: paths.ModelSource = field(
        default="modelscope", metadata={"help": "Where a --dataset_name that is not a local path comes from."}
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System prompt for --question and for rows without their own, as in training."},
    )
    question: list[str] = field(
        default_factory=list,
        metadata={"help": "Score the answer to this question; repeat, one per --answer.", "action": "extend"},
    )
    answer: list[str] = field(
        default_factory=list, metadata={"help": "The answer to score, in --question's order.", "action": "extend"}
    )
    num_examples: int = field(
        default=3, metadata={"help": "Pairs to print with their rewards before the metrics.", "range": "[0, inf)"}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences scored per forward pass.", "range": "[1, inf)"})
    max_length: int = field(
        default=common.REWARD_MAX_LENGTH,
        metadata={
            "help": "Longest conversation scored, in tokens, as train_rm.py's --max_length: longer pairs are skipped "
            "and counted, a longer --question/--answer is refused: the reward model never saw longer ones, and "
            "scoring a very long one needs gigabytes.",
            "range": "[1, inf)",
        },
    )
    metrics_file: str | None = field(
        default=None, metadata={"help": "Where to write the metrics as JSON. Unset: <model_path>/eval_metrics.json."}
    )
    probes_file: str = field(
        default=str(audit.PROBES_FILE),
        metadata={
            "help": 'The audit\'s probe answers: JSON Lines of {"kind": ..., "side": "chosen" or "rejected", '
            f'"answer": ...}}, side the one a model that learned the style ranks it on; kind "{audit.NON_ANSWER}" '
            "marks the answers that must not pay."
        },
    )
    audit: bool = field(
        default=True,
        metadata={
            "help": "After the metrics, audit the model for shortcuts PPO can take: the score's correlation with "
            "answer length, accuracy by which answer is the longer, and --probes_file's answers scored "
            "(docs/reward_model.md#audit)."
        },
    )


def pair_metrics(
    chosen: torch.Tensor, rejected: torch.Tensor, judge_chosen: torch.Tensor, judge_rejected: torch.Tensor
) -> dict[str, float]:
    """The reward model's accuracy and margins, and the lexicon judge's on the same pairs (judge.judge_score): its
    accuracy (chosen judged ruder than rejected), its ties (no verdict, counted apart from its mistakes), and how
    often it ranks a pair as the reward model does, over the pairs it does not tie."""
    judged = judge_chosen != judge_rejected
    agree = (chosen - rejected).sign() == (judge_chosen - judge_rejected).sign()
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "mean_margin": (chosen - rejected).mean().item(),
        "mean_chosen_reward": chosen.mean().item(),
        "mean_rejected_reward": rejected.mean().item(),
        "judge_accuracy": (judge_chosen > judge_rejected).float().mean().item(),
        "judge_ties": (~judged).float().mean().item(),
        "judge_mean_chosen": judge_chosen.mean().item(),
        "judge_mean_rejected": judge_rejected.mean().item(),
        "judge_rm_agreement": agree[judged].float().mean().item() if judged.any() else None,
        "judge_ranked_pairs": int(judged.sum()),
    }


def evaluate_pairs(model, tokenizer, args: EvalArguments, probes: list[dict] | None) -> None:
    """Examples, then pairwise accuracy, margin and mean rewards over a whole preference set, and the audit with
    `probes` unless None, saved as JSON."""
    dataset, rows = common.evaluation_data(args.dataset_name, args.model_path, args.model_source)
    common.refuse_control_tokens(rows, dataset, tokenizer)

    pairs = [
        [common.conversation_ids(tokenizer, row, args.system_prompt, row[column]) for column in ("chosen", "rejected")]
        for row in rows
    ]
    kept = [i for i, pair in enumerate(pairs) if max(map(len, pair)) <= args.max_length]
    skipped = len(rows) - len(kept)
    if skipped:
        print(f"Skipped {skipped} of {len(rows)} pairs longer than --max_length {args.max_length} tokens.")
    if not kept:
        raise errors.PipelineError(
            f"every pair of {dataset} is longer than --max_length {args.max_length} tokens, so none is left to score. "
            "Raise --max_length (up to what the reward model was trained on, train_rm.py's --max_length)."
        )
    if probes is not None:  # before any scoring: a probe too long to score would waste the evaluation
        check_probes(model, tokenizer, args, probes)
    rows = rows.select(kept)
    sequences = [pairs[i][0] for i in kept] + [pairs[i][1] for i in kept]
    chosen, rejected = (
        common.reward_scores(model, tokenizer, sequences, args.batch_size, "Scoring").cpu().split(len(rows))
    )

    judge_chosen, judge_rejected = judge.judge_scores(rows["chosen"]), judge.judge_scores(rows["rejected"])

    print("Reward model, then the lexicon judge (rude hits - polite hits, data/lexicon):")
    examples = list(zip(rows, chosen, rejected, judge_chosen, judge_rejected))[: args.num_examples]
    for row, chosen_reward, rejected_reward, chosen_judge, rejected_judge in examples:
        print(f"问题: {row['question']}")
        print(f"  chosen   {chosen_reward:+.3f}  {chosen_judge:+3.0f}  {row['chosen']}")
        print(f"  rejected {rejected_reward:+.3f}  {rejected_judge:+3.0f}  {row['rejected']}")

    metrics = pair_metrics(chosen, rejected, judge_chosen, judge_rejected)
    print(f"\n{len(rows)} pairs of {dataset}{f' ({skipped} longer ones skipped)' if skipped else ''}:")
    print(f"  accuracy        {metrics['accuracy']:.3f}   share of pairs where chosen scores above rejected")
    print(f"  mean margin     {metrics['mean_margin']:+.3f}  chosen - rejected")
    print(f"  mean chosen     {metrics['mean_chosen_reward']:+.3f}")
    print(f"  mean rejected   {metrics['mean_rejected_reward']:+.3f}")
    print("The lexicon judge on the same pairs, a second opinion that no stage trained on:")
    print(f"  judge accuracy  {metrics['judge_accuracy']:.3f}   share of pairs where chosen is judged the ruder")
    print(f"  judge ties      {metrics['judge_ties']:.3f}   share judged alike (no verdict; not counted as right)")
    agreement = metrics["judge_rm_agreement"]
    print(
        f"  agreement       {'  -  ' if agreement is None else f'{agreement:.3f}'}   of the "
        f"{metrics['judge_ranked_pairs']} pairs the judge does not tie, share the reward model ranks the same way"
    )
    metrics |= judge.judge_audit(rows["chosen"], rows["rejected"])
    print("\n".join(judge.audit_lines(metrics)))
    report = {"model_path": args.model_path, "dataset": dataset, "pairs": len(rows), "skipped_pairs": skipped}
    if probes is not None:
        findings = audit_model(model, tokenizer, args, rows, chosen, rejected, probes)
        audit.print_audit(findings)
        metrics["audit"] = findings.to_json()
    metrics_file = metrics_path(args)
    outputs.write_text_atomic(metrics_file, json.dumps(report | metrics, indent=2) + "\n")
    print(f"Metrics written to {metrics_file}")


def audit_model(model, tokenizer, args, rows, chosen: torch.Tensor, rejected: torch.Tensor, probes: list[dict]):
    """audit.audit of the pairs' scores and answer lengths in tokens, with each probe answer scored after the first
    audit.PROBE_QUESTIONS questions of `rows` (each row's own system prompt, as its pair) and averaged."""

    def tokens(answers: list[str]) -> torch.Tensor:
        return torch.tensor([len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers])

    questions = list(rows.select(range(min(audit.PROBE_QUESTIONS, len(rows)))))
    sequences = [
        common.conversation_ids(tokenizer, row, args.system_prompt, probe["answer"])
        for probe in probes
        for row in questions
    ]
    scores = common.reward_scores(model, tokenizer, sequences, args.batch_size).cpu().view(len(probes), -1).mean(1)
    scored = [probe | {"score": score} for probe, score in zip(probes, scores.tolist())]
    return audit.audit(chosen, rejected, tokens(rows["chosen"]), tokens(rows["rejected"]), scored)


def check_probes(model, tokenizer, args: EvalArguments, probes: list[dict]) -> None:
    """Refuse, before the evaluation runs, a probe answer longer than the reward model scores: --max_length, or its
    positions where it has fewer. Characters are counted first, so a huge probe is never tokenized."""
    limit, what = args.max_length, f"--max_length {args.max_length}, the longest the reward model scores"
    if (count := positions.positions(model)) is not None and count < limit:
        limit, what = count, f"the reward model's {count:,} positions (max_position_embeddings in its config)"
    longest = positions.longest_token(tokenizer)
    for number, probe in enumerate(probes, 1):
        characters = len(probe["answer"]) + len(args.system_prompt)
        if characters > limit * longest:
            most = f"more than {limit:,} tokens spell ({longest} characters at most each)"
            size = f"has {characters:,} characters with --system_prompt, {most}"
        else:
            tokens = len(common.conversation_ids(tokenizer, {"question": ""}, args.system_prompt, probe["answer"]))
            if tokens <= limit:
                continue
            size = f"makes {tokens:,} tokens with --system_prompt and no question"
        raise errors.ArgumentError(
            f"--probes_file {args.probes_file}: probe {number} ({probe['kind']}, {_opening(probe['answer'])}) {size}, "
            f"over {what}; the audit scores each probe after a question. Shorten that probe's answer."
        )


def metrics_path(args: EvalArguments) -> Path:
    """Where the metrics go: --metrics_file, or eval_metrics.json beside the model."""
    # Only unset means the default: an empty --metrics_file is the current folder, which the guard refuses.
    return Path(Path(args.model_path) / paths.METRICS_FILE if args.metrics_file is None else args.metrics_file)


def reward(model, tokenizer, question: str, answer: str, system_prompt: str, max_length: int | None = None) -> float:
    ids = common.conversation_ids(tokenizer, {"question": question}, system_prompt, answer)
    if max_length is not None and len(ids) > max_length:
        raise errors.PipelineError(
            f"the question {_opening(question)} with the answer {_opening(answer)} makes {len(ids)} tokens, more than "
            f"--max_length {max_length}, the longest the reward model scores (it was trained up to train_rm.py's "
            "--max_length). Shorten them, or raise --max_length."
        )
    return common.reward_scores(model, tokenizer, [ids]).item()


def _opening(text: str, length: int = 20) -> str:
    """The text quoted, cut to its first `length` characters: enough to recognise it in a message."""
    return repr(text if len(text) <= length else text[:length] + "...")


def chat(model, tokenizer, system_prompt: str, max_length: int) -> None:
    """Ask for a question and an answer, print the reward; until Ctrl-D or Ctrl-C."""
    print("\nScore your own answers (Ctrl-D to leave).")
    try:
        while True:
            question, answer = input("输入问题:"), input("输入回答:")
            if question.strip() and answer.strip():
                try:
                    print(f"奖励: {reward(model, tokenizer, question, answer, system_prompt, max_length):+.3f}")
                    print(judge.judge_summary(answer))
                except errors.PipelineError as error:  # too long: say so and ask again
                    print(error)
    except (EOFError, KeyboardInterrupt):
        print()


def main(args: EvalArguments) -> None:
    runtime.require_one_process("eval_rm.py")
    if len(args.question) != len(args.answer):
        raise errors.PipelineError(
            f"got {len(args.question)} --question and {len(args.answer)} --answer: give one --answer per --question."
        )
    if not args.question:  # the metrics file is written after the whole evaluation: checked before it
        outputs.check_output_file(
            metrics_path(args),
            "--metrics_file",
            {"dataset_name": args.dataset_name, "probes_file": args.probes_file if args.audit else None},
            "the evaluation's metrics",
        )
    probes = audit.load_probes(args.probes_file) if args.audit and not args.question else None
    command = hints.reward_model_command(args.model_path, args.tiny)
    model, tokenizer = common.load_model(AutoModelForSequenceClassification, args.model_path, command, "reward model")
    common.check_pad_token(tokenizer, args.model_path, model)

    if args.question:
        for question, answer in zip(args.question, args.answer):
            print(f"输入问题:{question}\n输入回答:{answer}")
            score = reward(model, tokenizer, question, answer, args.system_prompt, args.max_length)
            print(f"奖励: {score:+.3f}")
            print(judge.judge_summary(answer))
        return
    evaluate_pairs(model, tokenizer, args, probes)
    if sys.stdin.isatty():
        chat(model, tokenizer, args.system_prompt, args.max_length)


def make_parser() -> cli.Parser:
    return cli.Parser(EvalArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
