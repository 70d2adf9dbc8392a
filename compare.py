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
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

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
    intervals,
    judge,
    lifecycle,
    outputs,
    paths,
    positions,
    runtime,
    sampling,
    tiny,
)

# The models train_ppo.py --tiny trained, the tiny preset's answer length, and its answers per question. At 4, the
# demo's verdicts on SFT, PPO, PPO from the base and the original's claim came out alike in 6 of 6 disjoint draws of
# answers (seeds 42, 1 and 2, 8 answers each, split in two); at 1 answer PPO's was "no clear difference" in 5 of 24
# draws, at 2 in 2 of 12. DPO's and GRPO's gains (+0.1 to +0.5) sit at the edge of what 35 questions resolve: their
# verdicts differ between draws even at 8 answers.
TINY_SAMPLES_PER_QUESTION = 4
TINY_PRESET = dict(
    base_model_path=str(paths.TINY_BASE_DIR),
    model_source="tiny",
    max_new_tokens=tiny.TINY_RESPONSE_LENGTH,
    max_prompt_length=tiny.TINY_MAX_PROMPT_LENGTH,
    samples_per_question=TINY_SAMPLES_PER_QUESTION,
)


# The lexicon judge's rule, and how its agreement with the reward model is measured, for the printed table.
JUDGE_RULE = "rude hits - polite hits of data/lexicon (> 0: judged rude), which no stage optimised"
AGREEMENT_RULE = (
    "of the questions where the judge scores two models' answers differently (a question's answers by their mean), "
    "the share where the reward model scores higher the answers the judge finds ruder"
)
# Of every method (paths.METHODS): its name in words, the model it starts from (its gain and the judge's agreement
# are measured against that one), and, for a trained policy, the flag that names its folder.
LABELS = {name: method.label for name, method in paths.METHODS.items()}
STARTS = {name: method.start for name, method in paths.METHODS.items() if method.start}
POLICY_FLAGS = {name: paths.METHODS[name].flag for name in paths.POLICIES}
CHART_FILE = paths.COMPARISON_CHART  # beside the metrics file
CHOSEN_LABEL = "chosen answers (the data)"
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
    samples_per_question: int = field(
        default=1,
        metadata={
            "help": "Answers each method samples to each question, from the same seed; every figure's interval "
            "resamples the questions with their answers. Each answer is one generation, one reward-model pass and "
            "two KL passes. On 2 CPU cores compare.py --tiny takes about 15 s at 1 and 37 s at its 4; "
            "Qwen2.5-0.5B about 5 s an answer at 48 tokens (README, The real run on a CPU): about 3 min per method "
            "per answer to 35 questions.",
            "range": "[1, inf)",
        },
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
    left_out: dict[str, str]  # {method: why}, of those found but left out (check_methods)
    # {method: its answers, reward and judge scores (score), and KL to the SFT model}, question by question: each
    # question's samples_per_question answers one after another
    results: dict[str, dict]
    samples_per_question: int
    chosen: dict[str, intervals.Interval]  # the judge's figures of the rows' chosen answers (chosen_figures)


def check_methods(args: CompareArguments, found: dict[str, str], all_rows: Dataset) -> dict[str, str]:
    """Before any model loads: each method found (`found`, {method: folder}) whose adapter applies to the model it was
    trained on (common.policy_base), trained on none of the PPO run's held-out questions, and sharing the SFT model's
    tokenizer. A refusal then costs seconds, not the sampling and scoring of every method before it.

    A method found in its default folder that fails a check is left out, one line saying why: a folder another run
    left there (the tiny demo's PPO from the base beside a real run's models) must not cost the comparison of the
    others. The SFT and PPO models, and a method whose flag names its folder, stop the comparison instead. Returns
    {method: why} of those left out."""
    held_out_file = Path(args.ppo_model_path) / paths.HELD_OUT_FILE
    named, left_out, tokenizer_folders = cli.given(args), {}, {}

    def leave_out(name: str, error: errors.PipelineError) -> None:
        if name in ("sft", "ppo") or POLICY_FLAGS[name] in named:
            raise error
        left_out[name] = str(error)
        print(
            f"note: {LABELS[name]} ({found[name]}) is left out of the comparison: {error} To have this stop the "
            f"comparison instead, name its folder: --{POLICY_FLAGS[name]} {found[name]}"
        )

    for name, path in found.items():  # first what needs no tokenizer: the files that say where a model came from
        maker = hints.policy_command(name, path, args.tiny)
        try:
            checkpoints.require_checkpoint(path, maker)
            base = common.policy_base(path, maker, args.tiny, args.allow_other_base)
            if name != "sft" and args.dataset_name is None:  # a method that trained on these would be flattered
                common.check_same_held_out(all_rows, held_out_file, path, LABELS[name], f"--{POLICY_FLAGS[name]}")
            tokenizer_folders[name] = (base[0] if base else path, maker)  # an adapter's is its base model's
        except errors.PipelineError as error:
            leave_out(name, error)
    tokenizers = {}
    for name, (folder, maker) in tokenizer_folders.items():  # the SFT model's first (paths.POLICIES' order)
        with checkpoints.loading(folder, maker):
            tokenizers[name] = AutoTokenizer.from_pretrained(folder)
        try:
            where = f"{LABELS[name]} ({found[name]})"
            common.check_same_tokenizer(tokenizers["sft"], tokenizers[name], where, args.sft_model_path)
        except errors.PipelineError as error:
            leave_out(name, error)
    return left_out


def sample_methods(args: CompareArguments) -> Comparison:
    """Load each method found, one at a time beside the SFT model (the reference of each KL), and sample and score its
    answers to the same held-out questions. A method that trained on them, has another base than it was trained on,
    or has another tokenizer is refused before any samples, or left out where only its default folder found it
    (check_methods)."""
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
    left_out = check_methods(args, found, all_rows)
    found = {name: path for name, path in found.items() if name not in left_out}
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
    prompts = repeated(prompts, args.samples_per_question)
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
    return Comparison(
        dataset, rows, folders, missing, left_out, results, args.samples_per_question, chosen_figures(rows)
    )


def repeated(prompts: list[list[int]], times: int) -> list[list[int]]:
    """Each prompt `times` times, one after another: the answers then lie question by question, as
    intervals.by_question reads them."""
    return [prompt for prompt in prompts for _ in range(times)]


def print_examples(comparison: Comparison, count: int) -> None:
    """The first `count` questions, with every method's first answer and its reward and judge scores."""
    rows, results, k = comparison.rows, comparison.results, comparison.samples_per_question
    for q, row in enumerate(rows.select(range(min(count, len(rows))))):
        print(f"问题: {row['question']}")
        for name, result in results.items():
            i = q * k  # the question's first answer
            print(figures.answer_line(name, result["scores"][i], result["judge"][i], result["answers"][i]))


def print_table(comparison: Comparison, metrics: dict, agreement: dict, args: CompareArguments) -> None:
    """Every method's figures with their intervals and its difference from its start, the chosen answers' judge
    figures, the methods not found, and the judge's agreement with the reward model."""
    print("\n" + "\n".join(figures.table_lines(table_report(comparison, metrics, args))))
    print(f"judge: the lexicon judge, {JUDGE_RULE}. Agreement: {AGREEMENT_RULE}.")
    for pair, a in agreement.items():
        print(figures.agreement_line(pair, a))


def table_report(comparison: Comparison, metrics: dict, args: CompareArguments) -> dict:
    """The report's fields the table shows (figures.table_lines), without the answers."""
    return {
        "dataset": comparison.dataset,
        "questions": len(comparison.rows),
        "samples_per_question": comparison.samples_per_question,
        "seed": args.seed,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "missing": comparison.missing,
        "left_out": comparison.left_out,
        "metrics": metrics,
        "chosen": as_dicts(comparison.chosen),
    }


def write_report(comparison: Comparison, metrics: dict, checks: list, args: CompareArguments) -> None:
    """The chart of the methods' figures, and the JSON file of the settings, figures, checks and every answer (each
    question's answers in the order sampled)."""
    rows, folders, results = comparison.rows, comparison.folders, comparison.results
    k = comparison.samples_per_question
    metrics_file, chart_file = report_paths(args)
    report = table_report(comparison, metrics, args)
    chart = plot_methods(metrics, chart_file, report["chosen"])
    report = {
        **report,
        "models": {"reward": args.reward_model_path} | folders,
        "checks": {text: passed for passed, text in checks},
        "answers": [
            {"question": row["question"]}
            | {
                name: [
                    {"answer": r["answers"][i], "reward": r["scores"][i].item(), "judge": int(r["judge"][i])}
                    for i in range(q * k, (q + 1) * k)
                ]
                for name, r in results.items()
            }
            for q, row in enumerate(rows)
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


def answer_values(result: dict) -> dict[str, torch.Tensor]:
    """Each answer's value of every figure with an interval (figures.INTERVAL_KEYS), by its metrics key: a method's
    figure is their mean."""
    values = {
        "mean_reward": result["scores"],
        "judge_mean_score": result["judge"],
        "judge_share_rude": (result["judge"] > 0).float(),
        "mean_answer_tokens": result["lengths"].float(),
        "share_finished": result["stopped"].float(),
    }
    return values | ({"mean_kl_to_sft": result["kl"]} if "kl" in result else {})


def figure_intervals(result: dict, questions: int) -> dict[str, intervals.Interval]:
    """A method's figures with their 95% intervals, over its `questions` (each question's answers together)."""
    return {
        key: intervals.interval(intervals.by_question(values, questions))
        for key, values in answer_values(result).items()
    }


def differences(later: dict, earlier: dict, questions: int) -> dict[str, intervals.Interval]:
    """`later`'s figures minus `earlier`'s on the same questions, each with its paired 95% interval; the figures both
    have."""
    now, then = answer_values(later), answer_values(earlier)
    return {
        key: intervals.paired(intervals.by_question(now[key], questions), intervals.by_question(then[key], questions))
        for key in now
        if key in then
    }


def with_intervals(metrics: dict, results: dict, questions: int) -> dict:
    """Every method's metrics with its figures' intervals ("intervals") and, where its start (STARTS) ran, its paired
    differences from it ("vs_start", naming the start)."""
    found = {}
    for name, m in metrics.items():
        found[name] = m | {"intervals": as_dicts(figure_intervals(results[name], questions))}
        if (start := STARTS.get(name)) in results:
            found[name]["vs_start"] = {"start": start} | as_dicts(
                differences(results[name], results[start], questions)
            )
    return found


def as_dicts(found: dict[str, intervals.Interval]) -> dict[str, dict[str, float]]:
    """Intervals by metrics key, as the JSON report keeps them."""
    return {key: value.as_dict() for key, value in found.items()}


def chosen_figures(rows: Dataset) -> dict[str, intervals.Interval]:
    """The judge's score and judged-rude share of the rows' chosen answers (the data), one a question, with their
    95% intervals: what a model that imitated the data perfectly would reach on these questions."""
    scores = judge.judge_scores(rows["chosen"])
    return {
        "judge_mean_score": intervals.interval(scores),
        "judge_share_rude": intervals.interval((scores > 0).float()),
    }


def bar_errors(intervals_by_name: list[dict]) -> list[list[float]]:
    """matplotlib's yerr for bars at each interval's mean: the distances down to its low end and up to its high one
    (never below 0, which matplotlib refuses, should rounding put a mean a hair outside its interval)."""
    return [
        [max(i["mean"] - i["low"], 0.0) for i in intervals_by_name],
        [max(i["high"] - i["mean"], 0.0) for i in intervals_by_name],
    ]


def methods_figure(metrics: dict, chosen: dict | None = None):
    """The methods side by side, one bar each with its 95% interval, in one panel per figure of the table; the data's
    chosen answers (`chosen`) as a dashed line where they have that figure."""
    from matplotlib.figure import Figure

    names = [name for name in metrics if name in LABELS]
    rows = math.ceil(len(CHART_METRICS) / charts.CHART_COLUMNS)
    columns = math.ceil(len(CHART_METRICS) / rows)  # as charts.plot_scalars: rows filled evenly
    size = (charts.CHART_PANEL_SIZE[0] * columns, charts.CHART_PANEL_SIZE[1] * rows)
    figure = Figure(figsize=size, layout="constrained")
    for axes, (key, title) in zip(figure.subplots(rows, columns).flat, CHART_METRICS.items()):
        shown = [name for name in names if key in metrics[name]["intervals"]]
        found = [metrics[name]["intervals"][key] for name in shown]
        axes.bar(
            shown,
            [i["mean"] for i in found],
            yerr=bar_errors(found),
            capsize=3,
            color=[f"C{names.index(n)}" for n in shown],
        )
        if chosen and key in chosen:
            axes.axhline(chosen[key]["mean"], color="black", linestyle="--", linewidth=0.8, label=CHOSEN_LABEL)
            axes.legend(fontsize="small")
        axes.set_title(title, fontsize="medium")
        axes.axhline(0, color="black", linewidth=0.8)
        axes.tick_params(axis="x", labelrotation=45)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle("Every method on the same held-out questions (bars: 95% intervals)")
    return figure


def plot_methods(metrics: dict, path: Path, chosen: dict | None = None) -> Path:
    """methods_figure, saved to `path`."""
    figure = methods_figure(metrics, chosen)
    with outputs.atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=charts.CHART_DPI)
    return path


def judge_agreement(later: dict, earlier: dict, questions: int) -> dict:
    """AGREEMENT_RULE for two models' results on the same `questions`, each question's answers by their mean."""

    def per_question(key: str) -> torch.Tensor:
        now, then = (intervals.question_means(intervals.by_question(r[key], questions)) for r in (later, earlier))
        return now - then

    judge_diff, reward_diff = per_question("judge"), per_question("scores")
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


def span(change: intervals.Interval) -> str:
    """A difference's 95% interval in words: "95% interval [+0.21, +0.85]"."""
    return f"95% interval [{change.low:+.2f}, {change.high:+.2f}]"


def method_verdict(name: str, start: str, gain: intervals.Interval, kl: str) -> str:
    """Whether `name` moved its start's reward model score: "worked" only where the gain's interval lies above 0,
    "did NOT work" only where it lies below; otherwise no clear difference."""
    against = f"against the {LABELS[start]} model's{kl}."
    if gain.sign == 0:
        return f"{LABELS[name]}: no clear difference ({gain.mean:+.2f}, {span(gain)}) in its answers' scores {against}"
    verdict = "worked" if gain.sign > 0 else "did NOT work"
    return f"{LABELS[name]} {verdict}: its answers score {gain.mean:+.2f} ({span(gain)}) {against}"


def judge_verdict(gain: intervals.Interval, judge_gain: intervals.Interval, rude: str) -> str:
    """Whether the judge sees the reward model's verdict (`gain`) in its own paired interval (`judge_gain`): it agrees
    where both lie on the same side of 0, cannot tell where its own holds 0, and disagrees otherwise (it moved the
    other way, or moved where the reward model's holds 0)."""
    word = "cannot tell" if judge_gain.sign == 0 else "agrees" if judge_gain.sign == gain.sign else "disagrees"
    return f"The judge {word}: {judge_gain.mean:+.2f} in its score ({span(judge_gain)}), judged rude {rude}."


def claim_verdict(results: dict, questions: int) -> tuple[bool, str]:
    """The original's claim, that PPO without SFT first gains less: PPO after SFT's gain over the base minus PPO from
    the base's, paired over the questions (the base's answers cancel: it is PPO's scores minus PPO from the base's).
    It holds only where that interval lies above 0, fails only where it lies below."""
    from_base, after_sft = (differences(results[name], results["base"], questions) for name in ("ppo_base", "ppo"))
    by_question = {name: intervals.by_question(results[name]["scores"], questions) for name in ("ppo", "ppo_base")}
    lead = intervals.paired(by_question["ppo"], by_question["ppo_base"])
    verdict = {1: "holds", -1: "does NOT hold", 0: "is not shown"}[lead.sign]
    unclear = ": no clear difference" if lead.sign == 0 else ""
    return (
        lead.sign > 0,
        f"The original's claim {verdict} here: PPO from the base model gains "
        f"{from_base['mean_reward'].mean:+.2f} over the base, PPO after SFT {after_sft['mean_reward'].mean:+.2f} "
        f"(the difference {lead.mean:+.2f}, {span(lead)}{unclear}).",
    )


def outcome(metrics: dict, results: dict, questions: int) -> list[tuple[bool, str]]:
    """What each method is for, checked on the held-out questions and said in words, so a user can tell whether a run
    worked: each moves its starting point (STARTS) towards the answers the reward model prefers; whether the lexicon
    judge, which no stage optimised, sees the same move (ruder answers) or the reward model alone does; and, given
    PPO from the base, whether the original's claim holds that PPO without SFT first gains less; and for every method
    but SFT, the signs of reward hacking against its start (hacking.signs).

    Every verdict reads a paired 95% interval over the questions (differences), never a bare mean: a difference
    whose interval holds 0 is "no clear difference" (the judge: "cannot tell"), within what another draw of answers
    would give. Each check is (passed, text). A method's line and the judge's pass where the figure moved as the
    method is meant to move it: SFT must move the base, so only an interval above 0 passes; an RL method must at
    least keep its start's score, so any interval not below 0 passes (no clear difference included). The claim passes
    only where it holds; a reward-hacking alarm never passes."""
    checks = []
    for name, start in STARTS.items():
        if name not in results or start not in results:
            continue
        change = differences(results[name], results[start], questions)
        gain, judge_gain = change["mean_reward"], change["judge_mean_score"]
        needed = 1 if name == "sft" else 0  # the sign a passing interval has at least
        kl = f", at a KL of {metrics[name]['mean_kl_to_sft']:.2f} nats per answer from it" if start == "sft" else ""
        rude = f"{metrics[start]['judge_share_rude']:.2f} -> {metrics[name]['judge_share_rude']:.2f}"
        checks.append((gain.sign >= needed, method_verdict(name, start, gain, kl)))
        checks.append((judge_gain.sign >= needed, judge_verdict(gain, judge_gain, rude)))
        before, after = (held_out(results[method], questions) for method in (start, name))
        signs = hacking.signs(before, after) if name != "sft" else []
        if signs:  # SFT imitates the chosen answers: no reward to hack
            checks.append((False, f"{LABELS[name]}: {hacking.alarm(signs, f'the {LABELS[start]} model')}"))
    if {"base", "ppo", "ppo_base"} <= results.keys():
        checks.append(claim_verdict(results, questions))
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
    results, questions = comparison.results, len(comparison.rows)
    metrics = {name: method_metrics(result, comparison.folders[name]) for name, result in results.items()}
    metrics = with_intervals(metrics, results, questions)
    agreement = {
        f"{name}_vs_{STARTS[name]}": judge_agreement(results[name], results[STARTS[name]], questions)
        for name in results
        if STARTS.get(name) in results
    }
    print_table(comparison, metrics, agreement, args)
    metrics["judge_rm_agreement"] = agreement
    checks = outcome(metrics, results, questions)
    print("\n".join(text for _, text in checks))
    write_report(comparison, metrics, checks, args)


def make_parser() -> cli.Parser:
    return cli.Parser(CompareArguments)


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
