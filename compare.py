"""Compare every method on the held-out questions: the base, SFT, PPO, and PPO from the base, DPO and GRPO where their
checkpoints exist.

    python compare.py --tiny                        # every method the --tiny stages wrote, on their held-out questions
    python compare.py --max_new_tokens 48           # the real models, with shorter answers (faster on a CPU)

Samples every model with the same seed and settings as PPO's rollouts, scores the answers with the reward model exactly
as PPO did and with the lexicon judge (judge.judge_score), which no stage optimised, measures each one's KL to the SFT
model on its own answers, reads each run's training time (train_results.json), and writes the table and every answer
to checkpoint/ppo/eval_metrics.json and the chart beside it (methods.png).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

import common
from hfppo import (
    adapters,
    charts,
    checkpoints,
    cli,
    errors,
    figures,
    hacking,
    hints,
    judge,
    lifecycle,
    outputs,
    paths,
    positions,
    runtime,
    sampling,
    tiny,
)

# The models train_ppo.py --tiny trained, and the tiny preset's answer length.
TINY_PRESET = dict(
    base_model_path=str(paths.TINY_BASE_DIR),
    model_source="tiny",
    max_new_tokens=tiny.TINY_RESPONSE_LENGTH,
    max_prompt_length=tiny.TINY_MAX_PROMPT_LENGTH,
)


# The lexicon judge's rule, and how its agreement with the reward model is measured, for the printed table.
JUDGE_RULE = "rude hits - polite hits of data/lexicon (> 0: judged rude), which no stage optimised"
AGREEMENT_RULE = (
    "of the questions where the judge scores two models' answers differently, the share where the reward model "
    "scores higher the answer the judge finds ruder"
)
# Of every method (paths.METHODS): its name in words, the model it starts from (its gain and the judge's agreement
# are measured against that one), and, for a trained policy, the flag that names its folder.
LABELS = {name: method.label for name, method in paths.METHODS.items()}
STARTS = {name: method.start for name, method in paths.METHODS.items() if method.start}
POLICY_FLAGS = {name: paths.METHODS[name].flag for name in paths.POLICIES}
CHART_FILE = paths.COMPARISON_CHART  # beside the metrics file
CHART_METRICS = {
    "mean_reward": "reward model score",
    "judge_mean_score": "lexicon judge score",
    "mean_kl_to_sft": "KL to the SFT model (nats / answer)",
    "mean_answer_tokens": "answer length (tokens)",
}


@dataclass
class CompareArguments:
    ppo_model_path: str = field(
        default=str(paths.PPO_DIR),
        # --model_path, as in the other eval scripts, is the same flag: the name every script before this one took.
        metadata={"help": "The PPO checkpoint (a LoRA adapter).", "aliases": ["--model_path"]},
    )
    sft_model_path: str = field(
        default=str(paths.SFT_DIR), metadata={"help": "The SFT model the adapter was trained on."}
    )
    base_model_path: str = field(default=paths.DEFAULT_MODEL, metadata={"help": "The model before SFT."})
    reward_model_path: str = field(default=str(paths.RM_DIR), metadata={"help": "The reward model."})
    ppo_base_model_path: str = field(
        default=str(paths.PPO_BASE_DIR),
        metadata={"help": "PPO from the base model (train_ppo.py --from_base), if it exists."},
    )
    dpo_model_path: str = field(
        default=str(paths.DPO_DIR), metadata={"help": "The DPO adapter (train_dpo.py), if it exists."}
    )
    grpo_model_path: str = field(
        default=str(paths.GRPO_DIR), metadata={"help": "The GRPO adapter (train_grpo.py), if it exists."}
    )
    tiny: bool = field(default=False, metadata={"help": "Tiny preset: the models the --tiny stages wrote."})
    model_source: paths.ModelSource = field(
        default="modelscope", metadata={"help": "Where a base model or dataset that is not a local path comes from."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Questions from this dataset. Unset: those train_ppo.py held out."}
    )
    system_prompt: str = field(
        default=paths.DEFAULT_SYSTEM_PROMPT, metadata={"help": "For questions without their own, as in training."}
    )
    max_new_tokens: int = field(
        default=200, metadata={"help": "Longest answer, in tokens (PPO's response_length).", "range": "[1, inf)"}
    )
    max_prompt_length: int = field(
        default=common.MAX_PROMPT_LENGTH,
        metadata={
            "help": "Questions whose prompt is longer, in tokens, are skipped (as in training).",
            "range": "[1, inf)",
        },
    )
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature, as in PPO's rollouts.", "range": f"[{cli.MIN_TEMPERATURE}, inf)"},
    )
    seed: int = field(
        default=42, metadata={"help": "Every model samples from this seed.", "range": f"[0, {cli.MAX_SEED}]"}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Answers generated and scored per forward pass.", "range": "[1, inf)"}
    )
    num_examples: int = field(
        default=3, metadata={"help": "Questions shown with every model's answer.", "range": "[0, inf)"}
    )
    metrics_file: str | None = field(
        default=None, metadata={"help": "Where to write the JSON. Unset: <ppo_model_path>/eval_metrics.json."}
    )
    allow_other_base: bool = field(default=False, metadata={"help": adapters.ALLOW_HELP})


def report_paths(args: CompareArguments) -> tuple[Path, Path]:
    """Where the comparison writes its JSON (--metrics_file, or eval_metrics.json beside the PPO adapter) and its chart
    (CHART_FILE beside it)."""
    # Only unset means the default: an empty --metrics_file is the current folder, which the guard refuses.
    metrics_file = Path(
        Path(args.ppo_model_path) / paths.METRICS_FILE if args.metrics_file is None else args.metrics_file
    )
    if metrics_file.name == CHART_FILE:
        raise errors.ArgumentError(
            f"--metrics_file {metrics_file}: the chart is written beside it as {CHART_FILE}, so the two would be one "
            "file. Pass another name."
        )
    return metrics_file, metrics_file.parent / CHART_FILE  # not with_name: "." (an empty flag) has no name


@dataclass
class Comparison:
    """Every method's answers to the same held-out questions, with their scores, and where they came from."""

    dataset: str  # the questions' dataset (the PPO run's held-out file unless --dataset_name)
    rows: Dataset  # the questions, those within --max_prompt_length
    folders: dict[str, str]  # {method: its folder}, of those found, the base model's first
    missing: dict[str, str]  # {method: the command that makes it}, of those not found
    results: dict[str, dict]  # {method: its answers, reward and judge scores (score), and KL to the SFT model}


def check_methods(args: CompareArguments, found: dict[str, str], all_rows: Dataset) -> None:
    """Before any model loads: each method found (`found`, {method: folder}) whose adapter applies to the model it was
    trained on (common.policy_base), and, on the PPO run's held-out questions, trained on none of them. A refusal
    then costs seconds, not the sampling and scoring of every method before it."""
    held_out_file = Path(args.ppo_model_path) / paths.HELD_OUT_FILE
    for name, path in found.items():
        maker = hints.policy_command(name, path, args.tiny)
        checkpoints.require_checkpoint(path, maker)
        common.policy_base(path, maker, args.tiny, args.allow_other_base)
        if name != "sft" and args.dataset_name is None:  # a method that trained on these would be flattered by them
            common.check_same_held_out(all_rows, held_out_file, path, LABELS[name], f"--{POLICY_FLAGS[name]}")


def sample_methods(args: CompareArguments) -> Comparison:
    """Load each method found, one at a time beside the SFT model (the reference of each KL), and sample and score its
    answers to the same held-out questions; a method that trained on them, has another base than it was trained on
    (both checked before any samples: check_methods), or has another tokenizer, is refused."""
    dataset, all_rows = common.evaluation_data(args.dataset_name, args.ppo_model_path, args.model_source)
    readers = {"SFT model": args.sft_model_path, "reward model": args.reward_model_path}  # read before any loads
    limit = positions.fewest_positions({f"the {role} ({path})": path for role, path in readers.items()})
    prompt = f"--max_prompt_length {args.max_prompt_length}"
    shorten = "lower --max_prompt_length"
    positions.check_fits(prompt, args.max_prompt_length, "--max_new_tokens", args.max_new_tokens, limit, shorten)
    found, missing = common.find_policies(
        {name: getattr(args, flag) for name, flag in POLICY_FLAGS.items()}, args.tiny
    )
    for name in ("sft", "ppo"):  # the SFT model is every KL's reference; the PPO run holds the questions out
        if name in missing:
            raise errors.PipelineError(
                f"no model at {getattr(args, POLICY_FLAGS[name])}. Make it first: {missing[name]}"
            )
    check_methods(args, found, all_rows)
    base_path = common.resolve_model(args.base_model_path, args.model_source, False, "--base_model_path")
    rm_command = hints.reward_model_command(args.reward_model_path, args.tiny)
    reward_model, rm_tokenizer = common.load_model(
        AutoModelForSequenceClassification, args.reward_model_path, rm_command, "reward model"
    )
    common.check_pad_token(rm_tokenizer, args.reward_model_path, reward_model)
    sft_command = hints.policy_command("sft", args.sft_model_path, args.tiny)
    sft, tokenizer = common.load_policy(found["sft"], sft_command, args.tiny)
    common.refuse_control_tokens(all_rows, dataset, tokenizer)
    common.check_same_tokenizer(
        tokenizer, rm_tokenizer, f"the reward model ({args.reward_model_path})", args.sft_model_path
    )
    reward_fn = common.reward_model_fn(reward_model, tokenizer, args.batch_size)
    prompts, rows = common.prompts_within(tokenizer, all_rows, args.system_prompt, args.max_prompt_length)
    folders = {"base": base_path} | found

    # Every method samples from the same seed, so their answers differ by the model alone; one model loaded at a time
    # beside the SFT model, the reference of each KL.
    results = {}
    for name, path in folders.items():
        if name == "base":
            model, other_tokenizer = common.load_model(
                AutoModelForCausalLM, path, hints.base_model_remedy(path, "base_model_path"), "language model"
            )
        elif name == "sft":
            model, other_tokenizer = sft, tokenizer
        else:
            maker = hints.policy_command(name, path, args.tiny)
            model, other_tokenizer = common.load_policy(path, maker, args.tiny, args.allow_other_base)
        common.check_same_tokenizer(tokenizer, other_tokenizer, f"{LABELS[name]} ({path})", args.sft_model_path)
        set_seed(args.seed)
        batch = sampling.generate(
            model,
            tokenizer,
            prompts,
            args.max_new_tokens,
            args.temperature,
            args.batch_size,
            model.device,
            f"Sampling {name}",
        )
        results[name] = score(batch, reward_fn, tokenizer)
        if name != "sft":
            results[name]["kl"] = sampling.kl_to_reference(
                model, batch, args.temperature, args.batch_size, reference=sft
            ).cpu()
        del model
    return Comparison(dataset, rows, folders, missing, results)


def print_examples(comparison: Comparison, count: int) -> None:
    """The first `count` questions, with every method's answer and its reward and judge scores."""
    rows, results = comparison.rows, comparison.results
    for i, row in enumerate(rows.select(range(min(count, len(rows))))):
        print(f"问题: {row['question']}")
        for name, result in results.items():
            print(figures.answer_line(name, result["scores"][i], result["judge"][i], result["answers"][i]))


def print_table(comparison: Comparison, metrics: dict, agreement: dict, args: CompareArguments) -> None:
    """Every method's figures, one row each, the methods not found, and the judge's agreement with the reward model."""
    dataset, rows, missing = comparison.dataset, comparison.rows, comparison.missing
    print("\n" + figures.table_title(len(rows), dataset, args.temperature, args.seed))
    print(figures.TABLE_HEADER)
    for name, m in metrics.items():
        print(figures.method_row(name, m))
    for name, command in missing.items():
        print(figures.missing_row(name, command))
    print(f"judge: the lexicon judge, {JUDGE_RULE}. Agreement: {AGREEMENT_RULE}.")
    for pair, a in agreement.items():
        print(figures.agreement_line(pair, a))


def write_report(comparison: Comparison, metrics: dict, checks: list, args: CompareArguments) -> None:
    """The chart of the methods' figures, and the JSON file of the settings, figures, checks and every answer."""
    rows, folders, results = comparison.rows, comparison.folders, comparison.results
    metrics_file, chart_file = report_paths(args)
    chart = plot_methods(metrics, chart_file)
    report = {
        "dataset": comparison.dataset,
        "questions": len(rows),
        "seed": args.seed,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "models": {"reward": args.reward_model_path} | folders,
        "missing": comparison.missing,
        "metrics": metrics,
        "checks": {text: passed for passed, text in checks},
        "answers": [
            {"question": row["question"]}
            | {
                name: {"answer": r["answers"][i], "reward": r["scores"][i].item(), "judge": int(r["judge"][i])}
                for name, r in results.items()
            }
            for i, row in enumerate(rows)
        ],
    }
    outputs.write_text_atomic(metrics_file, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    print(f"Metrics and answers written to {metrics_file}; chart: {chart}")


def score(batch: dict[str, torch.Tensor], reward_fn, tokenizer) -> dict:
    """A method's answers, scored by the reward model as PPO scores them (without missing_eos_penalty: `stopped`
    reports the cut answers) and by the lexicon judge."""
    scores, stopped = sampling.score_answers(
        reward_fn, batch["queries"], batch["query_mask"], batch["responses"], batch["lengths"], tokenizer, 0.0
    )
    answers = sampling.answer_texts(tokenizer, batch)
    return {
        "scores": scores.cpu(),
        "judge": judge.judge_scores(answers),
        "stopped": stopped.cpu(),
        "answers": answers,
        "lengths": batch["lengths"].cpu(),
    }


def method_metrics(result: dict, path: str) -> dict:
    """The table's row of one method, with the training time its run logged (train_results.json) if it has one."""
    metrics = {
        "mean_reward": result["scores"].mean().item(),
        "share_reward_positive": (result["scores"] > 0).float().mean().item(),
        "mean_answer_tokens": result["lengths"].float().mean().item(),
        "share_finished": result["stopped"].float().mean().item(),
        "judge_mean_score": result["judge"].mean().item(),
        "judge_share_rude": (result["judge"] > 0).float().mean().item(),
    }
    if "kl" in result:
        metrics["mean_kl_to_sft"] = result["kl"].mean().item()
    train_results = Path(path) / paths.TRAIN_RESULTS_FILE
    if train_results.is_file():
        # Read once already, when the model loaded (checkpoints.require_checkpoint), so that a damaged file stops the
        # comparison before it samples rather than here.
        keys = checkpoints.CHECKPOINT_JSON[paths.TRAIN_RESULTS_FILE]
        logged = checkpoints.read_checkpoint_json(train_results, "Train that model again.", keys)
        metrics |= {
            "train_runtime_s": logged["train_runtime"],
            "train_samples_per_second": logged["train_samples_per_second"],
        }
    return metrics


def plot_methods(metrics: dict, path: Path) -> Path:
    """The methods side by side, one bar each, in one panel per figure of the table."""
    from matplotlib.figure import Figure

    names = [name for name in metrics if name in LABELS]
    rows = math.ceil(len(CHART_METRICS) / charts.CHART_COLUMNS)
    columns = math.ceil(len(CHART_METRICS) / rows)  # as charts.plot_scalars: rows filled evenly
    size = (charts.CHART_PANEL_SIZE[0] * columns, charts.CHART_PANEL_SIZE[1] * rows)
    figure = Figure(figsize=size, layout="constrained")
    for axes, (key, title) in zip(figure.subplots(rows, columns).flat, CHART_METRICS.items()):
        shown = [name for name in names if key in metrics[name]]
        axes.bar(shown, [metrics[name][key] for name in shown], color=[f"C{names.index(n)}" for n in shown])
        axes.set_title(title, fontsize="medium")
        axes.axhline(0, color="black", linewidth=0.8)
        axes.tick_params(axis="x", labelrotation=45)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Every method on the same held-out questions, same seed and sampling")
    with outputs.atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=charts.CHART_DPI)
    return path


def judge_agreement(later: dict, earlier: dict) -> dict:
    """AGREEMENT_RULE for two models' results on the same questions."""
    judge_diff, reward_diff = later["judge"] - earlier["judge"], later["scores"] - earlier["scores"]
    judged = judge_diff != 0
    agree = (reward_diff.sign() == judge_diff.sign())[judged]
    return {
        "agreement": agree.float().mean().item() if judged.any() else None,
        "questions": int(judged.sum()),
        "ties": int((~judged).sum()),
    }


def held_out(result: dict, questions: int) -> hacking.HeldOut:
    """A method's answers, as the reward-hacking alarm reads them."""
    return hacking.HeldOut.of(
        result["scores"],
        result["judge"],
        questions,
        result["lengths"].float().mean().item(),
        result["stopped"].float().mean().item(),
    )


def outcome(metrics: dict, results: dict, questions: int) -> list[tuple[bool, str]]:
    """What each method is for, checked on the held-out questions and said in words, so a user can tell whether a run
    worked: each moves its starting point (STARTS) towards the answers the reward model prefers; whether the lexicon
    judge, which no stage optimised, sees the same move (ruder answers) or the reward model alone does; and, given
    PPO from the base, whether the original's claim holds that PPO without SFT first gains less; and for every method
    but SFT, the signs of reward hacking against its start (hacking.signs)."""
    reward = {name: m["mean_reward"] for name, m in metrics.items() if name in LABELS}
    judge = {name: m["judge_mean_score"] for name, m in metrics.items() if name in LABELS}
    rude = {name: m["judge_share_rude"] for name, m in metrics.items() if name in LABELS}
    checks = []
    for name, start in STARTS.items():
        if name not in reward or start not in reward:
            continue
        # SFT must move the base; an RL method must at least keep its start's score
        gain, judge_gain = reward[name] - reward[start], judge[name] - judge[start]
        worked = gain > 0 if name == "sft" else gain >= 0
        agrees = judge_gain > 0 if name == "sft" else judge_gain >= 0
        kl = f", at a KL of {metrics[name]['mean_kl_to_sft']:.2f} nats per answer from it" if start == "sft" else ""
        checks.append((
            worked,
            f"{LABELS[name]} {'worked' if worked else 'did NOT work'}: its answers score {gain:+.2f} against the "
            f"{LABELS[start]} model's{kl}.",
        ))  # fmt: skip
        checks.append((
            agrees,
            f"The judge {'agrees' if agrees else 'does NOT agree'}: {judge_gain:+.2f} in its score, judged rude "
            f"{rude[start]:.2f} -> {rude[name]:.2f}.",
        ))  # fmt: skip
        before, after = (held_out(results[method], questions) for method in (start, name))
        signs = hacking.signs(before, after) if name != "sft" else []
        if signs:  # SFT imitates the chosen answers: no reward to hack
            checks.append((False, f"{LABELS[name]}: {hacking.alarm(signs, f'the {LABELS[start]} model')}"))
    if {"base", "ppo", "ppo_base"} <= reward.keys():
        from_base, after_sft = reward["ppo_base"] - reward["base"], reward["ppo"] - reward["base"]
        holds = from_base < after_sft
        checks.append((
            holds,
            f"The original's claim {'holds' if holds else 'does NOT hold'} here: PPO from the base model gains "
            f"{from_base:+.2f} over the base, PPO after SFT {after_sft:+.2f}.",
        ))  # fmt: skip
    return checks


def main(args: CompareArguments) -> None:
    """Every method's answers to the same held-out questions, scored by the reward model and the lexicon judge, with
    each one's KL to the SFT model and its training time; a table, a chart and a JSON file with every answer."""
    runtime.require_one_process("compare.py")
    for path in report_paths(args):  # written after the whole comparison: checked before it
        outputs.check_output_file(
            path, "--metrics_file", {"dataset_name": args.dataset_name}, "the comparison's metrics and answers"
        )
    comparison = sample_methods(args)
    print_examples(comparison, args.num_examples)
    results = comparison.results
    metrics = {name: method_metrics(result, comparison.folders[name]) for name, result in results.items()}
    agreement = {
        f"{name}_vs_{STARTS[name]}": judge_agreement(results[name], results[STARTS[name]])
        for name in results
        if STARTS.get(name) in results
    }
    print_table(comparison, metrics, agreement, args)
    metrics["judge_rm_agreement"] = agreement
    checks = outcome(metrics, results, len(comparison.rows))
    print("\n".join(text for _, text in checks))
    write_report(comparison, metrics, checks, args)


def make_parser() -> cli.Parser:
    return cli.Parser(CompareArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
