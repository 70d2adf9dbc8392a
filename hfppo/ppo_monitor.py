"""What PPO's run reports and watches (train_ppo.py): its trackers and progress bar, each update's figures, the
held-out evaluations with the reward-hacking alarm, the stops on divergence, and the closing line. Not a script:
train_ppo.py calls it, passing its ScriptArguments and PPOConfig as `script_args` and `config`."""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from peft import PeftModel
from torch import nn
from tqdm import tqdm

from hfppo import (
    charts,
    errors,
    figures,
    hacking,
    hints,
    intervals,
    judge,
    paths,
    ppo_saves,
    sampling,
    trackers,
    training,
)
from hfppo.meter import PhaseMeter
from hfppo.ppo_setup import Plan

CHART_TAGS = [
    "objective/scores", "objective/kl", "objective/entropy", "loss/policy_avg", "loss/value_avg",
    "eval/score", "eval/judge_score", "eval/kl", "eval/answer_length",
]  # fmt: skip
EVAL_SAMPLES = 4  # held-out answers shown in TensorBoard's text tab at each evaluation
# The held-out figures each evaluation logs with their 95% interval, its bounds beside them (charts.band_tags).
INTERVAL_TAGS = ("eval/score", "eval/judge_score")


@torch.no_grad()
def evaluate(
    policy: PeftModel,
    tokenizer,
    reward_fn: sampling.RewardFn,
    prompts: list[list[int]],
    config,
    accelerator,
) -> tuple[dict[str, float], dict[str, list]]:
    """The policy on the held-out `prompts`: mean score (the reward model's, or reward_fn's; no missing_eos_penalty)
    and the lexicon judge's, each with its 95% interval (with_intervals), the share judged rude, KL to the SFT model
    (k1, summed over each answer), mean answer length in tokens, share finished at the stop token; and every
    question, answer and score.

    Training's random streams are left as they were: the sampling draws from a fork of the RNG of the CPU and the
    training device, seeded with `config.seed` (every evaluation samples with the same seed, so the curves move with
    the policy, not with the draw). The adapter stays unmerged, so the reference weights are untouched and a run
    trains bitwise alike whatever its evaluation schedule (a test checks it). Every process evaluates the same
    questions with the same seed and gets the same figures; the main process logs them.
    """
    device = accelerator.device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        torch.manual_seed(config.seed)
        batch = sampling.generate(
            policy,
            tokenizer,
            prompts,
            config.response_length,
            config.temperature,
            config.eval_batch_size,
            device,
            "Evaluating" if accelerator.is_main_process else None,
            over_another_bar=True,
        )
    with accelerator.autocast():
        scores, stopped = sampling.score_answers(
            reward_fn, batch["queries"], batch["query_mask"], batch["responses"], batch["lengths"], tokenizer, 0.0
        )
        kl = sampling.kl_to_reference(policy, batch, config.temperature, config.eval_batch_size)
    answers = sampling.answer_texts(tokenizer, batch)
    judged = judge.judge_scores(answers)
    metrics = with_intervals(dict(zip(INTERVAL_TAGS, (scores, judged))), len(prompts)) | {
        "eval/judged_rude": (judged > 0).float().mean().item(),
        "eval/kl": kl.mean().item(),
        "eval/answer_length": batch["lengths"].float().mean().item(),
        "eval/finished": stopped.float().mean().item(),
    }
    samples = {"answer": answers, "score": scores.tolist(), "judge": judged.tolist()}
    return metrics, samples


def with_intervals(answers: dict[str, torch.Tensor], questions: int) -> dict[str, float]:
    """Each tag's mean over the `questions` held-out questions of its per-answer values (`answers`, question by
    question), and its 95% bootstrap interval's bounds under charts.band_tags (hfppo/intervals.py)."""
    logged = {}
    for tag, values in answers.items():
        spread = intervals.interval(intervals.by_question(values.float().cpu(), questions))
        low, high = charts.band_tags(tag)
        logged |= {tag: spread.mean, low: spread.low, high: spread.high}
    return logged


def samples_markdown(questions: list[str], samples: dict[str, list], count: int) -> str:
    """The first `count` held-out questions with their answers and scores, as a Markdown table for TensorBoard's text
    tab (line breaks shown as ⏎ and pipes escaped, so each answer stays in its cell)."""

    def cell(text: str) -> str:
        return re.sub(r"\r\n|\r|\n", "⏎", text).replace("|", "\\|")

    lines = ["| question | answer | score | judge |", "|---|---|---|---|"]
    for question, answer, score, judged in list(zip(questions, samples["answer"], samples["score"], samples["judge"]))[
        :count
    ]:
        lines.append(f"| {cell(question)} | {cell(answer)} | {score:+.3f} | {judged:+.0f} |")
    return "\n".join(lines)


def update_metrics(
    scores, stopped, kl, non_score_reward, logprobs, lengths, stats: dict[str, list], times: dict[str, float]
) -> dict[str, torch.Tensor]:
    """One update's figures, under TRL's PPOTrainer names, on this process (main averages them over processes)."""

    def mean_of(key: str) -> torch.Tensor:
        return torch.stack(stats[key]).mean()

    grad_norms = (
        {"policy/grad_norm": mean_of("policy_grad_norm"), "val/grad_norm": mean_of("critic_grad_norm")}
        if stats["policy_grad_norm"]
        else {}
    )
    return {
        "objective/kl": kl.sum(1).mean(),
        "objective/entropy": (-logprobs).sum(1).mean(),
        "objective/non_score_reward": non_score_reward.sum(1).mean(),
        "objective/rlhf_reward": (scores + non_score_reward.sum(1)).mean(),
        "objective/scores": scores.mean(),
        "policy/approxkl_avg": mean_of("approxkl"),
        "policy/clipfrac_avg": mean_of("clipfrac"),
        "policy/entropy_avg": mean_of("entropy"),
        "loss/policy_avg": mean_of("policy_loss"),
        "loss/value_avg": mean_of("value_loss"),
        "val/clipfrac_avg": mean_of("value_clipfrac"),
        "val/ratio": mean_of("ratio"),
        **grad_norms,
        "val/answer_length": lengths.float().mean(),
        **{f"time/{phase}": torch.tensor(seconds) for phase, seconds in times.items()},
    }


# What an update's figures must keep finite, and their names in a message: the score first (a reward model or
# function that returns NaN poisons every figure after it), then the losses, and the gradient norms where they are
# measured (not under DeepSpeed, whose clipping does not report them).
FINITE_METRICS = {
    "objective/scores": "the mean score",
    "loss/policy_avg": "the policy loss",
    "loss/value_avg": "the value loss",
    "policy/grad_norm": "the policy's gradient norm",
    "val/grad_norm": "the critic's gradient norm",
}


# torch.multinomial's error when the probabilities it samples from hold NaN or inf: what sampling from a policy whose
# weights are finite but overflow in its forward pass raises (one optimizer step per update at a learning rate far
# too high), at the next update, before any figure of this one showed it.
SAMPLING_FAILURE = "probability tensor contains either `inf`, `nan` or element < 0"


def divergence(update: int, problem: str, config, last_state: Path | None) -> errors.PipelineError:
    critic = f", the critic's {config.critic_learning_rate:g}" if config.critic_learning_rate else ""
    return training.divergence_error(
        f"update {update}",
        problem,
        config.output_dir,
        last_state,
        f"Lower --learning_rate (this run's: {config.learning_rate:g}{critic}) or --critic_learning_rate and run "
        "again; a run that diverges at any learning rate points at its reward or at a setting that scales the loss "
        "or its gradients.",
    )


def unsampleable(
    update: int, start_update: int, start: Path | str, config, last_state: Path | None
) -> errors.PipelineError:
    """What stops a run whose policy cannot be sampled from (SAMPLING_FAILURE) at update `update` + 1: a policy it
    started from (`start`) that is broken, or one that the previous update left with weights too large."""
    if update == start_update:
        return errors.PipelineError(
            f"no answer can be sampled from the policy this run starts from ({start}): its next-token probabilities "
            "hold NaN or inf, so its weights are not finite or overflow. Train it again (at a lower learning rate, "
            "if its training diverged)."
        )
    problem = (
        "the policy's next-token probabilities hold NaN or inf, so no answer can be sampled: the weights update "
        f"{update} left are finite but overflow in its forward pass"
    )
    overflowing = Path(config.output_dir) / f"{ppo_saves.CHECKPOINT_PREFIX}{update}"  # if it was saved, it holds them
    return divergence(update + 1, problem, config, None if last_state == overflowing else last_state)


def stop_if_diverged(
    update: int,
    metrics: dict[str, torch.Tensor],
    model: nn.Module,
    config,
    last_state: Path | None,
    run_log: trackers.Trackers | None,
) -> None:
    """Stop the run at an update whose figures (FINITE_METRICS) or trained weights, the adapter's and the critic's,
    hold NaN or inf: before that state is evaluated or saved, with the trackers finished (TensorBoard's curves up to
    the divergence on disk). The weights are read at every update (one pass over them, little beside an update's
    sampling and training passes): one optimizer step can turn them non-finite from finite gradients, as a NaN
    --max_grad_norm did, and the next update's sampling would fail before a loss showed it.
    """
    problem = next(
        (
            f"{name} is {metrics[key].item()}"
            for key, name in FINITE_METRICS.items()
            if key in metrics and not torch.isfinite(metrics[key])
        ),
        None,
    )
    if problem is None:
        name = training.non_finite_parameter(model)
        problem = name and f"the weights of {name} hold NaN or inf values"
    if problem:
        if run_log is not None:
            run_log.finish()
        raise divergence(update, problem, config, last_state)


@dataclass
class Evaluation:
    """What every evaluation of a run reads: the policy and its tokenizer, the reward, the held-out prompts and their
    rows, and where the figures go (`run_log` None on every process but the main one)."""

    policy: PeftModel
    tokenizer: object
    reward_fn: sampling.RewardFn
    prompts: list[list[int]]
    rows: Dataset
    config: object  # train_ppo.py's PPOConfig
    accelerator: Accelerator
    run_log: trackers.Trackers | None  # the run's trackers (--report_to)
    start: hacking.HeldOut | None = None  # the policy before training, which the reward-hacking alarm compares with


def evaluate_and_log(update: int, run: Evaluation) -> None:
    """Evaluate on the held-out questions, log eval/* and sample answers at `update`, and say it in one line; the
    first evaluation becomes the alarm's starting point, and a later one that shows reward hacking (hacking.signs)
    says so in a line of its own and in TensorBoard's text tab (eval/reward_hacking)."""
    metrics, samples = evaluate(run.policy, run.tokenizer, run.reward_fn, run.prompts, run.config, run.accelerator)
    held_out = hacking.HeldOut.of(
        torch.tensor(samples["score"]),
        torch.tensor(samples["judge"]),
        len(run.prompts),
        metrics["eval/answer_length"],
        metrics["eval/finished"],
    )
    run.start = run.start or held_out
    signs = hacking.signs(run.start, held_out, run.config.hacking_length_drop)
    metrics["eval/hacking_signs"] = len(signs)
    if run.run_log is None:
        return
    run.run_log.log(metrics, update)
    run.run_log.text("eval/samples", samples_markdown(run.rows["question"], samples, EVAL_SAMPLES), update)
    tqdm.write(figures.ppo_eval_line(metrics | {"update": update}))
    if signs:
        line = hacking.alarm(signs, "the policy before training")
        tqdm.write(line)
        run.run_log.text("eval/reward_hacking", line, update)


@contextmanager
def unsampleable_stops(
    update: int, start_update: int, start: Path | str, config, last_state: Path | None, run_log
) -> Iterator[None]:
    """Around the sampling of update `update` + 1: a policy that cannot be sampled from (SAMPLING_FAILURE) stops the
    run with `unsampleable`'s message, the trackers finished first (the curves up to the divergence, on disk)."""
    try:
        yield
    except RuntimeError as error:
        if SAMPLING_FAILURE not in str(error):
            raise
        if run_log is not None:
            run_log.finish()  # the curves up to the divergence, on disk
        raise unsampleable(update, start_update, start, config, last_state) from None


@dataclass
class Logs:
    """Where a run's figures go: its trackers (`run_log`: None on every process but the main one), its TensorBoard
    run, the held-out evaluation and the progress bar."""

    run_log: trackers.Trackers | None
    run_dir: Path | None  # the TensorBoard run's folder, None without TensorBoard
    tensorboard_run: str | None  # the TensorBoard run each periodic checkpoint names
    evaluation: Evaluation
    progress: tqdm


def start_logging(
    plan: Plan, script_args, config, model: nn.Module, tokenizer, reward_fn, prompts: list, eval_prompts, eval_rows
) -> Logs:
    """The run's trackers and progress bar, and the lines that say what the run does.

    Logging goes to --report_to's trackers. A resumed run continues the TensorBoard run its checkpoint names,
    dropping what that run logged after the checkpoint (purge_step), so its curves and chart cover every update once;
    the other trackers start a new run from the checkpoint's update."""
    accelerator, saved, resume = plan.accelerator, plan.saved, plan.resume
    run_dir = (
        charts.tensorboard_run(plan.stage, saved.get("tensorboard_run")) if "tensorboard" in config.report_to else None
    )
    run_name = f"{plan.stage} {run_dir.name if run_dir else time.strftime('%Y-%m-%d %H-%M-%S')}"
    # The TensorBoard run each periodic checkpoint names: this one, or, logging without TensorBoard, the checkpoint's
    # (a later resume with TensorBoard continues it).
    tensorboard_run = str(run_dir) if run_dir else saved.get("tensorboard_run")
    run_log = trackers.start(
        accelerator,
        config.report_to,
        run_name,
        asdict(script_args) | asdict(config),
        run_dir,
        purge_step=plan.start_update + 1 if resume else None,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(
        f"PPO of {plan.inputs.policy}: {len(prompts)} questions, {plan.num_updates} updates of {plan.sizes.batch} "
        f"answers, {trainable:,} trained parameters (LoRA + critic); "
        f"{trackers.describe(config.report_to, run_dir, run_name)}"
        + (f"; resuming at update {plan.start_update} from {resume}" if resume else "")
    )
    if eval_prompts:
        tensorboard_bands(run_log)
        accelerator.print(
            f"Evaluating on {len(eval_prompts)} held-out questions before the first update, every {plan.eval_every} "
            "updates and after the last (eval/ in the trackers' scalars; the scores' 95% intervals in brackets)."
        )
    unwrapped = accelerator.unwrap_model(model)
    evaluation = Evaluation(
        unwrapped.policy, tokenizer, reward_fn, eval_prompts, eval_rows, config, accelerator, run_log
    )
    evaluation.start, unusable = saved_alarm_start(saved, len(eval_prompts))
    if unusable:
        accelerator.print(
            f"The reward-hacking alarm compares with this run's first evaluation: the checkpoint's start {unusable}."
        )
    progress = tqdm(
        total=plan.num_updates * plan.sizes.batch,
        initial=plan.start_update * plan.sizes.batch,
        unit="episode",
        disable=not accelerator.is_main_process,
    )
    return Logs(run_log, run_dir, tensorboard_run, evaluation, progress)


def tensorboard_bands(run_log: trackers.Trackers | None) -> None:
    """Lay out TensorBoard's Custom Scalars tab: each of INTERVAL_TAGS as a margin chart, the series with its 95% band
    (its Scalars tab draws the bounds as series of their own, beside it). On the main process (`run_log`), once a run,
    where TensorBoard is among the trackers."""
    if run_log is None:
        return
    layout = {"eval": {tag: ["Margin", [tag, *charts.band_tags(tag)]] for tag in INTERVAL_TAGS}}
    for tracker in run_log.accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.tracker.add_custom_scalars(layout)


def saved_alarm_start(saved: dict, questions: int) -> tuple[hacking.HeldOut | None, str | None]:
    """The reward-hacking alarm's start that a resumed run reads from its checkpoint's progress (`saved`), so that the
    alarm compares with the run's own start, not with where it resumed; or None, with why, where this run's
    evaluations of `questions` held-out questions cannot be compared with it, answer by answer: a checkpoint saved
    before the alarm compared answer by answer holds only means, and one saved under another --num_eval_questions
    (a resume may change it) holds the answers to another number of questions. The alarm then starts at this run's
    first evaluation. Without evaluation (`questions` 0) the start is kept, for the checkpoints this run saves."""
    if "eval_start" not in saved:
        return None, None
    if set(saved["eval_start"]) != {field.name for field in fields(hacking.HeldOut)}:
        return None, "holds means only (saved before the alarm compared answer by answer)"
    start = hacking.HeldOut(**saved["eval_start"])
    if questions and start.questions != questions:
        return None, (
            f"answered {start.questions} held-out questions, and this run evaluates {questions} (--num_eval_questions)"
        )
    return start, None


def log_update(
    update: int,
    figures: dict[str, torch.Tensor],
    rollout: dict[str, torch.Tensor],
    stats: dict[str, list],
    meter: PhaseMeter,
    update_cpu: float,
    accelerator: Accelerator,
    lr: float,
    batch_size: int,
    logs: Logs,
) -> dict[str, torch.Tensor]:
    """Log update `update`'s figures, averaged over the processes (val/num_eos_tokens summed: a count;
    memory/*_gib the highest: memory/<phase>_gib each phase's peak, memory/peak_gib the update's), and move the
    progress bar; the figures. time/cpu: the update's CPU seconds since `update_cpu`, every thread's, steadier than
    wall time on a shared machine."""
    scores, stopped = figures["scores"], figures["stopped"]
    times = meter.seconds | {"cpu": time.process_time() - update_cpu}
    metrics = update_metrics(
        scores, stopped, figures["kl"], figures["non_score_reward"], rollout["logprobs"], rollout["lengths"], stats,
        times,
    )  # fmt: skip
    metrics = {key: value.detach().float().to(accelerator.device) for key, value in metrics.items()}
    metrics = accelerator.reduce(metrics, reduction="mean")
    metrics["val/num_eos_tokens"] = accelerator.reduce(stopped.float().sum(), reduction="sum")
    peaks = accelerator.gather(torch.tensor([[*meter.peak_gib.values()]], device=accelerator.device)).amax(0)
    metrics |= {f"memory/{phase}_gib": peak for phase, peak in zip(meter.peak_gib, peaks)}
    metrics["memory/peak_gib"] = peaks.max()
    if logs.run_log is not None:
        scalars = {key: value.item() for key, value in metrics.items()}
        scalars |= {"lr": lr, "episode": update * batch_size}
        logs.run_log.log(scalars, update)
    logs.progress.update(batch_size)
    logs.progress.set_postfix(
        score=f"{metrics['objective/scores'].item():+.2f}", kl=f"{metrics['objective/kl'].item():.2f}"
    )
    return metrics


def checkpoint_progress(run: dict, update: int, logs: Logs) -> dict:
    """The counters a periodic checkpoint saves for a resume: the batch shape (`run`), the update, the TensorBoard
    run to continue, and the alarm's starting point."""
    return (
        run
        | {"update": update}
        | ({"tensorboard_run": logs.tensorboard_run} if logs.tensorboard_run else {})
        | ({"eval_start": asdict(logs.evaluation.start)} if logs.evaluation.start else {})
    )


def say_done(logs: Logs, plan: Plan, script_args, config) -> None:
    """Finish the trackers, draw the chart, and say where the adapter and critic are and how to compare them."""
    logs.run_log.finish()
    curves = charts.curves_note(
        logs.run_dir, CHART_TAGS, f"PPO: {plan.inputs.policy}", config.report_to, xlabel="update"
    ) or (
        "; no chart, which is drawn from TensorBoard's files: --report_to "
        f"{' '.join(config.report_to) or 'none'} has no tensorboard"
    )
    flag, default = (
        ("ppo_base_model_path", paths.PPO_BASE_DIR) if script_args.from_base else ("model_path", paths.PPO_DIR)
    )
    compare = hints.command(
        "compare.py",
        script_args.tiny,
        **{flag: hints.unless_default(config.output_dir, default)},
        sft_model_path=hints.unless_default(script_args.sft_model_path, paths.SFT_DIR),
        reward_model_path=hints.unless_default(script_args.reward_model_path, paths.RM_DIR),
    )
    print(
        f"Adapter saved to {config.output_dir}, critic to {Path(config.output_dir) / ppo_saves.VALUE_DIR}{curves}. "
        f"Compare it with every other method: {compare}"
    )
