"""PPO's set-up (train_ppo.py): the checks on its arguments and inputs before any model loads, the accelerator, the
update's sizes, the models, and the prompts in their order. Not a script: train_ppo.py calls it, passing its
ScriptArguments and PPOConfig as `script_args` and `config`.

The one module of the package that imports the top-level common.py: it is train_ppo.py's set-up, moved out of the
script, and calls the steps every stage takes alike (loading, the held-out split, the tokenizer checks) as the other
stage scripts do."""

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

import common
from hfppo import (
    charts,
    checkpoints,
    cli,
    errors,
    hints,
    lifecycle,
    lora,
    outputs,
    paths,
    positions,
    ppo_saves,
    resuming,
    runtime,
    sampling,
    trackers,
)

# The most updates a run may ask for: 10 million updates at one second each (the tiny preset's pace on a CPU; real
# models take longer) are four months. More is a typo, such as --num_train_epochs 1e9, refused before any model loads.
MAX_UPDATES = 10**7


# The flags that do nothing with --from_base, and without it, each with what the run reads instead: given on the
# command line, each is refused (a --config file's keys are not: one file serves both modes, configs/cpu/ppo.yaml).
UNUSED_WITH_FROM_BASE = {
    "sft_model_path": "the policy and its reference start from --base_model_path, and no SFT model is read",
}
UNUSED_WITHOUT_FROM_BASE = {
    "base_model_path": "the policy and its reference start from the SFT model (--sft_model_path), and the critic "
    "from --value_model_path",
}


def check_arguments(script_args, config) -> None:
    """The checks no flag's range expresses (those are the fields' ranges: cli.field_range); a flag given that does
    nothing in the mode chosen (UNUSED_WITH_FROM_BASE, UNUSED_WITHOUT_FROM_BASE); --from_base's own output folder;
    --report_to's trackers, as names."""
    if script_args.eval_fraction == 0:
        raise errors.ArgumentError("train_ppo.py holds questions out for compare.py: --eval_fraction must be above 0.")
    if config.lora_dropout != 0:
        raise errors.ArgumentError(
            f"--lora_dropout {config.lora_dropout:g}: every model runs in eval mode, so the adapter's dropout would "
            "never act; PPO keeps dropout off so that log-probs are deterministic and the ratio measures policy "
            "change only. Leave --lora_dropout at 0."
        )
    if config.eval_steps > 1 and config.eval_steps != int(config.eval_steps):
        raise errors.ArgumentError(
            f"--eval_steps {config.eval_steps}: give a whole number of updates, or a fraction of the run below 1."
        )
    unused = UNUSED_WITH_FROM_BASE if script_args.from_base else UNUSED_WITHOUT_FROM_BASE
    given = cli.given(script_args)
    for flag, why in unused.items():
        if flag in given:
            mode, remedy = ("with", "drop --from_base") if script_args.from_base else ("without", "add --from_base")
            raise errors.ArgumentError(
                f"--{flag} {getattr(script_args, flag)} does nothing {mode} --from_base: {why}. Drop --{flag}, or "
                f"{remedy}."
            )
    if config.output_dir is None:  # --from_base's own folder: never over the PPO run it is compared with
        config.output_dir = str(paths.PPO_BASE_DIR if script_args.from_base else paths.PPO_DIR)
    config.report_to = trackers.resolve(config.report_to)  # "all" and "none" made names; each one installed


def make_accelerator(config) -> tuple[Accelerator, bool]:
    """The accelerator (DDP or DeepSpeed ZeRO-1/2), and whether each model's gradient norm is clipped on its own:
    DeepSpeed clips the global norm of both models itself (gradient_clipping) and holds the gradients in shards, so
    only under DDP and on one process. It logs to --report_to's trackers (TensorBoard added by trackers.start)."""
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision="bf16" if config.bf16 else "no",
        log_with=trackers.log_with(config.report_to),
    )
    runtime.check_distributed(accelerator.state)
    zero_stage = accelerator.state.deepspeed_plugin.zero_stage if accelerator.state.deepspeed_plugin else 0
    if accelerator.distributed_type == DistributedType.FSDP or zero_stage == 3:
        raise errors.PipelineError(
            "train_ppo.py runs under DDP or DeepSpeed ZeRO-1/2 (configs/accelerate/ddp.yaml or zero2.yaml), not under "
            "FSDP or ZeRO-3: those shard the weights, and every update's generation and reference pass would have "
            "to gather them. ZeRO-2 shards the critic's optimizer state and gradients, most of PPO's memory."
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate reads the micro batch from a prepared DataLoader, and PPO has none: it samples its own batches.
        deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config
        deepspeed_config["train_micro_batch_size_per_gpu"] = config.per_device_train_batch_size
        deepspeed_config["gradient_clipping"] = config.max_grad_norm
        accelerator.print(
            f"Under DeepSpeed, --max_grad_norm {config.max_grad_norm:g} clips the policy's and the critic's gradients "
            "together (DeepSpeed clips one global norm): while the critic's norm is the larger, as early in a run, it "
            "shrinks the policy's step too. If the policy learns slower than under ddp.yaml, raise --max_grad_norm "
            "above the critic's norm (val/grad_norm of a DDP run)."
        )
    return accelerator, accelerator.distributed_type != DistributedType.DEEPSPEED


@dataclass
class BatchSizes:
    """How many answers each part of an update handles, derived from the flags as TRL's PPOTrainer derives them: an
    update samples `local_batch` answers per process, generates and scores them `rollout_chunk` at a time, and trains
    on them in minibatches of `mini_batch` (one optimizer step each), each accumulated over micro batches of
    per_device_train_batch_size. So the rollout's size is set by num_mini_batches, not by the micro batch."""

    local_batch: int  # answers per update, per process
    batch: int  # answers per update, every process together
    mini_batch: int  # answers per optimizer step, per process
    rollout_chunk: int  # answers per generate / scoring pass


def exact_div(numerator: int, denominator: int, message: str) -> int:
    """numerator / denominator when it is whole, else an ArgumentError with `message`: derived sizes are never floored
    in silence (summarize_from_feedback_details' exact_div, Huang et al. 2024)."""
    if numerator % denominator:
        raise errors.ArgumentError(f"{message} {cli.HELP_HINT}")
    return numerator // denominator


def batch_sizes(config, num_processes: int) -> BatchSizes:
    """The update's sizes (see BatchSizes), each division checked."""
    micro, accumulation, minibatches = (
        config.per_device_train_batch_size,
        config.gradient_accumulation_steps,
        config.num_mini_batches,
    )
    local_batch = micro * accumulation * minibatches
    product = (
        f"--per_device_train_batch_size {micro} x --gradient_accumulation_steps {accumulation} x --num_mini_batches "
        f"{minibatches} = {local_batch}"
    )
    chunk = config.local_rollout_forward_batch_size
    if chunk < local_batch:
        exact_div(
            local_batch,
            chunk,
            f"--local_rollout_forward_batch_size {chunk} does not divide the {product} answers each process samples "
            "per update: every generate and scoring pass takes the same number of answers, so that the first pass "
            f"shows the memory each needs. Pick a divisor of {local_batch} (or at least {local_batch}, for one pass), "
            "or change the batch flags.",
        )
    batch = local_batch * num_processes
    if config.total_episodes is not None:
        exact_div(
            config.total_episodes,
            batch,
            f"--total_episodes {config.total_episodes} is not a whole number of updates of {batch} answers ({product} "
            f"per process, on {num_processes} process(es)). Use a multiple of {batch}.",
        )
    return BatchSizes(local_batch, batch, micro * accumulation, min(chunk, local_batch))


def count_updates(config, sizes: BatchSizes, num_questions: int) -> int:
    """Updates in the run: --total_episodes / the update's answers (whole: batch_sizes checks it), or num_train_epochs
    x the questions rounded up to whole updates, the last completing its batch from the next epoch's shuffle (as TRL's
    num_total_batches). More than MAX_UPDATES is refused."""
    if config.total_episodes is None:
        updates = config.num_train_epochs * num_questions / sizes.batch  # a float: inf past float's range
        asked = f"--num_train_epochs {config.num_train_epochs} of {num_questions} training questions"
    else:
        updates = config.total_episodes / sizes.batch
        asked = f"--total_episodes {config.total_episodes}"
    if updates > MAX_UPDATES:
        raise errors.ArgumentError(
            f"{asked} makes more than {MAX_UPDATES:,} updates of {sizes.batch} answers: at a second an update, "
            "faster than any model here trains, that many would run for months. Ask for fewer (or raise the answers "
            "per update)."
        )
    return math.ceil(updates) if config.total_episodes is None else config.total_episodes // sizes.batch


@dataclass
class Inputs:
    """The input models' folders, checked for their roles, and the commands that make each."""

    policy: str  # the policy's starting point and reference: the SFT model, or the base with --from_base
    policy_role: str  # what the policy starts from, in words
    policy_command: str
    value: str
    value_command: str
    reward: str
    reward_command: str


def check_inputs(script_args, held_out: Dataset, output_dir: str, own_reward: bool) -> Inputs:
    """Every input folder checked for what its role needs before any model loads, so a wrong one fails in a second;
    and none may have trained on this run's held-out questions, which would flatter the comparison on them."""
    if script_args.from_base:
        policy = common.resolve_model(
            script_args.base_model_path, script_args.model_source, rebuild_stale=False, flag="--base_model_path"
        )
        policy_role, flag = "base model", "--base_model_path"
        policy_command = hints.base_model_remedy(policy, "base_model_path")
    else:
        policy, policy_role, flag = script_args.sft_model_path, "SFT model", "--sft_model_path"
        policy_command = hints.policy_command("sft", policy, script_args.tiny)
    checkpoints.require_checkpoint(policy, policy_command, "language model")
    reward_command = hints.reward_model_command(script_args.reward_model_path, script_args.tiny)
    saved_as = Path(output_dir) / paths.HELD_OUT_FILE
    common.check_same_held_out(held_out, saved_as, policy, policy_role, flag)
    if not own_reward:
        checkpoints.require_checkpoint(script_args.reward_model_path, reward_command, "reward model")
        common.check_same_held_out(
            held_out, saved_as, script_args.reward_model_path, "reward model", "--reward_model_path"
        )
    value = common.resolve_model(
        script_args.value_model_path, script_args.model_source, rebuild_stale=False, flag="--value_model_path"
    )
    value_command = hints.base_model_remedy(value, "value_model_path")
    checkpoints.require_checkpoint(value, value_command, "critic")
    return Inputs(
        policy, policy_role, policy_command, value, value_command, script_args.reward_model_path, reward_command
    )


def check_lengths(inputs: Inputs, config, own_reward: bool) -> None:
    """Refuse a --max_prompt_length and --response_length whose prompt and answer cannot fit the positions of every
    model that reads them (read from their config.json before any loads)."""
    readers = {inputs.policy_role: inputs.policy, "critic": inputs.value} | (
        {} if own_reward else {"reward model": inputs.reward}
    )
    limit = positions.fewest_positions({f"the {role} ({path})": path for role, path in readers.items()})
    prompt = f"--max_prompt_length {config.max_prompt_length}"
    shorten = "lower --max_prompt_length"
    positions.check_fits(prompt, config.max_prompt_length, "--response_length", config.response_length, limit, shorten)


def load_models(
    inputs: Inputs, config, reward_fn: sampling.RewardFn | None, device, rollout_chunk: int
) -> tuple[object, PeftModel, nn.Module, sampling.RewardFn]:
    """(tokenizer, policy, critic, reward function): the policy's starting point with a new LoRA adapter (adapter
    off: the reference), the critic, and the reward model's scores unless `reward_fn` is given. All three models must
    share the policy's tokenizer. Every model stays in eval mode and LoRA dropout is 0: with no dropout anywhere,
    log-probs are deterministic, so the PPO ratio and the KL measure policy change only."""
    tokenizer = checkpoints.load_tokenizer(inputs.policy, inputs.policy_command)
    common.check_pad_token(tokenizer, inputs.policy)
    torch.manual_seed(config.seed)  # the same initial adapter and score head in every process
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    with checkpoints.loading(inputs.policy, inputs.policy_command):
        starting_point = AutoModelForCausalLM.from_pretrained(inputs.policy, dtype=torch.float32)
    lora.check_target_modules(starting_point, config.lora_target_modules, inputs.policy)
    policy = get_peft_model(starting_point, lora_config)
    with checkpoints.loading(inputs.value, inputs.value_command):
        critic = load_critic(inputs.value)
    common.check_same_tokenizer(
        tokenizer, checkpoints.load_tokenizer(inputs.value, inputs.value_command), f"the critic ({inputs.value})",
        inputs.policy,
    )  # fmt: skip
    if reward_fn is None:
        reward_model, rm_tokenizer = common.load_model(
            AutoModelForSequenceClassification, inputs.reward, inputs.reward_command, "reward model"
        )
        common.check_pad_token(rm_tokenizer, inputs.reward, reward_model)
        common.check_same_tokenizer(tokenizer, rm_tokenizer, f"the reward model ({inputs.reward})", inputs.policy)
        reward_fn = common.reward_model_fn(reward_model.to(device), tokenizer, rollout_chunk)
    return tokenizer, policy, critic, reward_fn


def checkpoint_layers(model: PreTrainedModel) -> None:
    """Gradient checkpointing (Chen et al. 2016, arXiv:1604.06174) of each decoder layer, the model left in eval mode.

    transformers checkpoints a layer only while the layer's `training` flag is set, and only when gradients are on:
    setting the flag on the layers alone, not on their submodules, keeps every dropout off (the PPO ratio measures
    policy change only: `load_models`), and generation and scoring, run without gradients, are unchanged.
    """
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


def load_critic(path: str) -> nn.Module:
    """The critic: the model at `path` with a new, randomly initialised score head (one output), or with its own
    when `path` is a reward model, in fp32.

    From a causal LM's checkpoint the score head is missing and the LM head unused, which transformers reports in a
    LOAD REPORT table in terminal colour codes at every start; that expected case is said here in one line. Any other
    missing, unexpected or mismatched weight still gets a warning. The report is filtered out rather than its logger
    quietened: transformers 5.24 runs a tensor-parallel check, and warns "layers were not sharded", whenever that
    logger's level is set to WARNING or above.
    """

    def not_the_load_report(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    loader_log = logging.getLogger("transformers.modeling_utils")
    loader_log.addFilter(not_the_load_report)
    try:
        critic, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, output_loading_info=True
        )
    finally:
        loader_log.removeFilter(not_the_load_report)
    new_head = sorted(key for key in info["missing_keys"] if key.startswith("score."))
    unused = {key for key in info["unexpected_keys"] if key.startswith("lm_head.")}
    surprises = set(info["missing_keys"]) - set(new_head) | set(info["unexpected_keys"]) - unused
    surprises |= set(map(str, info["mismatched_keys"]))
    if surprises:
        warnings.warn(f"the critic from {path} did not load as a causal LM should: {', '.join(sorted(surprises))}")
    if new_head:
        PartialState().print(
            f"The critic: {path} plus a new score head ({', '.join(new_head)}), randomly initialised."
        )
    else:
        PartialState().print(f"The critic: {path}, its score head included.")
    return critic


class PromptOrder:
    """Prompt indices for the whole run, one shuffle per epoch so that a resumed run takes the same prompts, drawn as
    the run reaches them: `order[start:stop]` shuffles the epochs up to `stop` and keeps those from `start` on, so a
    run of any length holds one update's epochs, not the whole run's. Ask for rows in order (update after update)."""

    def __init__(self, num_prompts: int, seed: int):
        self.num_prompts = num_prompts
        self._generator = torch.Generator().manual_seed(seed)
        self._drawn = 0  # epochs shuffled so far, in the generator's order
        self._kept: dict[int, torch.Tensor] = {}  # epoch -> its shuffle, for the epochs of the rows last asked for

    def __getitem__(self, rows: slice) -> torch.Tensor:
        first, last = rows.start // self.num_prompts, (rows.stop - 1) // self.num_prompts
        if first < min(self._kept, default=self._drawn):
            raise ValueError(f"rows from {rows.start} on were asked for after later ones, and are no longer held")
        for epoch in range(self._drawn, last + 1):
            shuffle = torch.randperm(self.num_prompts, generator=self._generator)
            if epoch >= first:
                self._kept[epoch] = shuffle
        self._drawn = max(self._drawn, last + 1)
        self._kept = {epoch: shuffle for epoch, shuffle in self._kept.items() if epoch >= first}
        held = torch.cat([self._kept[epoch] for epoch in range(first, last + 1)])
        offset = first * self.num_prompts
        return held[rows.start - offset : rows.stop - offset]


def process_share(order: PromptOrder, update: int, batch_size: int, accelerator: Accelerator) -> torch.Tensor:
    """The prompts (indices) this process answers in `update`: its own slice of the update's `batch_size` prompts,
    so that the processes together answer each prompt of the batch once."""
    local_batch_size = batch_size // accelerator.num_processes
    start = accelerator.process_index * local_batch_size
    return order[update * batch_size : (update + 1) * batch_size][start : start + local_batch_size]


@dataclass
class Plan:
    """What the set-up settles before any model loads: the accelerator, the update's sizes, the data, the run's
    length, where it resumes from, and its checked inputs."""

    accelerator: Accelerator
    per_model_clipping: bool  # each model's gradient norm clipped on its own (make_accelerator)
    sizes: BatchSizes
    settings: dict  # the run's settings, saved with each checkpoint (resuming.run_settings)
    data: Dataset
    train_rows: Dataset
    held_out: Dataset  # the rows SFT and the reward model held out too
    num_updates: int
    eval_every: int  # updates between held-out evaluations
    resume: Path | None  # the checkpoint to resume from
    run: dict  # the batch shape a resumed run must match (ppo_saves.resume_point)
    saved: dict  # the counters saved in the checkpoint resumed from; {} for a new run
    start_update: int
    left_out: list[str]  # the training states --resume_resets_state starts afresh
    inputs: Inputs
    stage: str  # ppo, or ppo_base with --from_base: the TensorBoard run's folder


def plan_run(script_args, config, own_reward: bool) -> Plan:
    """Every check that needs no model, in the order that fails fastest: the arguments, the accelerator and the
    update's sizes (every division exact), the output folder, the data, the checkpoint to resume from, the input
    folders, the disk's room and the lengths; then the output folder locked. `own_reward`: a reward function replaces
    the reward model."""
    check_arguments(script_args, config)
    accelerator, per_model_clipping = make_accelerator(config)
    sizes = batch_sizes(config, accelerator.num_processes)
    batch_size = sizes.batch
    settings = resuming.run_settings(script_args, config)
    input_flags = ("sft_model_path", "reward_model_path", "value_model_path", "dataset_name") + (
        "base_model_path",
    ) * bool(script_args.from_base)
    outputs.check_output_dir(
        config.output_dir,
        {flag: getattr(script_args, flag) for flag in input_flags},
        0,  # the room the run's saves need is checked once the models and the updates are known (run_save_bytes)
        "train_ppo.py",
    )
    prunes = config.save_steps > 0 and config.save_total_limit > 0
    outputs.check_periodic_checkpoints(config.output_dir, config.resume_from_checkpoint, prunes)

    # Data first: a bad file fails in a second, before any model is loaded. The held-out questions are the rows SFT
    # and the reward model held out too.
    data = common.load_preference_data(script_args.dataset_name, script_args.model_source)
    train_rows, held_out = common.split_held_out(data, script_args.eval_fraction)
    num_updates = count_updates(config, sizes, len(train_rows))
    eval_every = math.ceil(config.eval_steps * num_updates) if config.eval_steps < 1 else int(config.eval_steps)

    # Resume, inputs, the output folder's lock.
    resume = Path(config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    run = {"batch_size": batch_size, "num_updates": num_updates, "processes": accelerator.num_processes}
    saved = ppo_saves.resume_point(resume, run, settings)
    start_update = saved.get("update", 0)
    left_out = []
    if resume is not None:
        state_dir, files = resume / ppo_saves.TRAINING_STATE_DIR, ppo_saves.training_state_files(accelerator)
        accept, rng_keys = script_args.resume_resets_state, resuming.RNG_KEYS["accelerate"]
        left_out = resuming.check_training_state(state_dir, files, accept, rng_keys)
    inputs = check_inputs(script_args, held_out, config.output_dir, own_reward=own_reward)
    outputs.check_room(config.output_dir, ppo_saves.run_save_bytes(inputs, config, num_updates, start_update))
    check_lengths(inputs, config, own_reward=own_reward)
    lifecycle.lock_output_dir(config.output_dir)
    stage = "ppo_base" if script_args.from_base else "ppo"
    if "tensorboard" in config.report_to:  # its run folder is made after the models load: checked before
        charts.check_tensorboard_folder(stage)
    return Plan(
        accelerator, per_model_clipping, sizes, settings, data, train_rows, held_out, num_updates, eval_every,
        resume, run, saved, start_update, left_out, inputs, stage,
    )  # fmt: skip


def prompt_sets(
    tokenizer, plan: Plan, system_prompt: str, config
) -> tuple[list[list[int]], PromptOrder, list[list[int]], Dataset]:
    """(training prompts, their order, held-out prompts, held-out rows): the training questions in one shuffled order
    per epoch for the whole run; the first --num_eval_questions held-out ones for evaluation."""
    print_ = plan.accelerator.print
    prompts, _ = common.prompts_within(tokenizer, plan.train_rows, system_prompt, config.max_prompt_length, print_)
    order = PromptOrder(len(prompts), config.seed)
    eval_rows = plan.held_out.select(range(min(config.num_eval_questions, len(plan.held_out))))
    eval_prompts, eval_rows = (
        common.prompts_within(tokenizer, eval_rows, system_prompt, config.max_prompt_length, print_)
        if len(eval_rows)
        else ([], eval_rows)
    )
    return prompts, order, eval_prompts, eval_rows
