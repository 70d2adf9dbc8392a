"""Stage 3, PPO: the SFT model with a LoRA adapter learns to write answers the reward model scores high, held near
the SFT model by a KL penalty (InstructGPT's RL step, Ouyang et al. 2022, arXiv:2203.02155; PPO, Schulman et al. 2017,
arXiv:1707.06347). The implementation details follow "The N+ Implementation Details of RLHF with PPO" (Huang et al.
2024, arXiv:2403.17031) and CleanRL's ppo.py; the loop below is the algorithm, one numbered step per block.

    python train_ppo.py --tiny                      # offline tiny preset on a CPU, about a minute
    python train_ppo.py                             # Qwen2.5-0.5B-Instruct, after train_sft.py and train_rm.py
    python train_ppo.py --config configs/ppo.yaml   # every field is settable from YAML as well as the CLI
    accelerate launch --config_file configs/accelerate/ddp.yaml train_ppo.py    # every GPU (or zero2.yaml)
    python train_ppo.py --resume_from_checkpoint checkpoint/ppo/checkpoint-200

Writes the policy's LoRA adapter and tokenizer to checkpoint/ppo, the critic to checkpoint/ppo/value, periodic
training states to checkpoint/ppo/checkpoint-<update>, and logs to --report_to's trackers: TensorBoard by default,
its scalars and their chart in tensorboard/ppo/<time> (ppo.png; a resumed run continues its run's folder), with eval/*
scalars and sample answers from the held-out questions, scored by the reward model and by the lexicon judge PPO does
not optimise, before the first update, every --eval_steps updates and after the last. Chat with the result:
eval_ppo.py; compare it with the base and SFT models: compare.py.

Under N processes each answers its own 1/N of every update's prompts, so N processes with per_device_train_batch_size
b train on the batch of one process with b and N times the gradient accumulation. Computed over the whole batch:
the advantage whitening's mean and variance (all-reduced: the one batch statistic the update uses, so the advantages
do not depend on how the batch is split), the gradients (averaged by DDP over equal micro batches) and the logged
metrics (averaged over the processes' equal shares; val/num_eos_tokens summed). Per process, because each is a
function of single answers or only orders the work: the sampling (seed + process index), scores, per-token KL, GAE,
the minibatch shuffle, and the token mean inside each micro batch's loss.
"""

import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel, get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer

import common
from hfppo import (
    adapters,
    charts,
    checkpoints,
    cli,
    errors,
    hacking,
    hints,
    judge,
    lifecycle,
    lora,
    outputs,
    paths,
    positions,
    resuming,
    runtime,
    sampling,
    tiny,
    trackers,
    training,
)
from hfppo.meter import PhaseMeter

CHECKPOINT_PREFIX = "checkpoint-"  # periodic checkpoints: checkpoint-<update>
# In each periodic checkpoint: accelerate's save_state (weights, optimizer, scheduler, every process's RNG) and the
# run's counters, so a resumed run continues as if never stopped, under DDP and DeepSpeed alike.
TRAINING_STATE_DIR = "training_state"
PROGRESS_FILE = "progress.json"
# accelerate's names in it for the optimizer, the schedule (registered for checkpointing: the first custom object)
# and each process's random state.
OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE = "optimizer.bin", "custom_checkpoint_0.pkl", "random_states_{}.pkl"
VALUE_DIR = "value"  # the critic, inside each PPO checkpoint: TRL's PPOTrainer never saved it (trl#3293)
WHITEN_EPS = 1e-8
CHART_TAGS = [
    "objective/scores", "objective/kl", "objective/entropy", "loss/policy_avg", "loss/value_avg",
    "eval/score", "eval/judge_score", "eval/kl", "eval/answer_length",
]  # fmt: skip
EVAL_SAMPLES = 4  # held-out answers shown in TensorBoard's text tab at each evaluation
# The most updates a run may ask for: 10 million updates at one second each (the tiny preset's pace on a CPU; real
# models take longer) are four months. More is a typo, such as --num_train_epochs 1e9, refused before any model loads.
MAX_UPDATES = 10**7
# transformers' SchedulerType less those that need what the loop does not give them (a metric to step on, as
# reduce_lr_on_plateau and greedy, or lr_scheduler_kwargs, as the min_lr and warmup_stable_decay ones).
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
)  # fmt: skip

# A library message that says nothing a user can act on, silenced by its exact text where it is raised (common.py
# silences peft's is_gradient_checkpointing warning for every script):
# - accelerate's save_state leaves the LM head out of the saved weights because it is the embedding matrix itself
#   (tie_word_embeddings, as in Qwen2.5-0.5B), and load_state fills both from that one copy: the resume test checks it.
logging.getLogger("accelerate.utils.other").addFilter(
    lambda record: not re.search(r"Removed shared tensor \{'[\w.]*lm_head\.weight'\}", record.getMessage())
)

# A CPU-sized run of the same recipe: short answers, a large learning rate for the tiny model's LoRA and critic, and
# more updates per batch, so that the reward moves within a minute; held-out evaluations every quarter of the run (5,
# not the default's 11: on the tiny model each costs about what an update does).
TINY_PRESET = dict(
    dataset_name=str(paths.SAMPLE_DATA),
    model_source="tiny",
    base_model_path=str(paths.TINY_BASE_DIR),
    value_model_path=str(paths.TINY_BASE_DIR),
    response_length=tiny.TINY_RESPONSE_LENGTH,
    max_prompt_length=tiny.TINY_MAX_PROMPT_LENGTH,
    learning_rate=3e-3,
    num_train_epochs=1,
    per_device_train_batch_size=8,
    gradient_accumulation_steps=1,
    local_rollout_forward_batch_size=16,
    num_mini_batches=2,
    num_ppo_epochs=4,
    save_steps=0,
    eval_steps=0.25,
)


@dataclass
class ScriptArguments(cli.StageArguments):
    sft_model_path: str = field(
        default=str(paths.SFT_DIR), metadata={"help": "The SFT model: the policy's frozen base and the reference."}
    )
    reward_model_path: str = field(default=str(paths.RM_DIR), metadata={"help": "The reward model, frozen."})
    from_base: bool = field(
        default=False,
        metadata={
            "help": "Start the policy and its reference from --base_model_path instead of the SFT model, writing "
            "checkpoint/ppo_base unless --output_dir is given: the test of the original's claim that PPO without SFT "
            "hardly converges."
        },
    )
    base_model_path: str = field(default=paths.DEFAULT_MODEL, metadata={"help": "--from_base: the model before SFT."})
    value_model_path: str = field(
        default=paths.DEFAULT_MODEL,
        metadata={"help": "The critic's starting point: this model plus a new score head, all parameters trained."},
    )


@dataclass
class PPOConfig:
    """PPO's hyperparameters, named as in TRL's PPOConfig so that its users find the same flags.

    Defaults are the original run's (learning rate, batch 2 x 4, rollout batch 8, cliprange 0.1 and 0.5, vf_coef 0.5,
    2 PPO epochs, 200-token answers, the LoRA) and TRL's where it kept TRL's (kl_coef, gamma, lam, temperature,
    weight decay 0). Three differ on purpose: LoRA dropout 0 (was 0.05), missing_eos_penalty 1.0 (was unset), and
    max_grad_norm clipping each model's gradient on its own (TRL clipped the two together).
    """

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Where the adapter and critic are saved. Unset: {paths.PPO_DIR}, or {paths.PPO_BASE_DIR} with "
            "--from_base."
        },
    )
    num_train_epochs: float = field(
        default=2, metadata={"help": "Passes over the training questions.", "range": "(0, inf)"}
    )
    total_episodes: int | None = field(
        default=None,
        metadata={
            "help": "Answers to train on in all; unset: num_train_epochs x the training questions.",
            "range": "[1, inf)",
        },
    )
    learning_rate: float = field(
        default=5e-6,
        metadata={
            "help": "AdamW learning rate of the policy's LoRA adapter (the actor's, in OpenRLHF's words).",
            "range": "(0, inf)",
        },
    )
    critic_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "AdamW learning rate of the critic (OpenRLHF's critic_learning_rate); unset: --learning_rate.",
            "range": "(0, inf)",
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "AdamW weight decay, both models (TRL's default 0; torch's AdamW has 0.01).",
            "range": "[0, inf)",
        },
    )
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "Schedule over the updates (to 0 at the end).", "choices": LR_SCHEDULERS},
    )
    warmup_steps: int = field(default=0, metadata={"help": "Updates of linear warmup.", "range": "[0, inf)"})
    max_grad_norm: float = field(
        default=1.0,
        metadata={
            "help": "Clip each model's gradient norm (the policy's, the critic's) to this; under DeepSpeed, their "
            "joint norm (DeepSpeed clips one global norm).",
            "range": "(0, inf)",  # clipping to 0 zeroes the gradients; the Trainer's stages read 0 as no clipping
        },
    )
    per_device_train_batch_size: int = field(
        default=2, metadata={"help": "Answers per forward-backward pass (the micro batch).", "range": "[1, inf)"}
    )
    gradient_accumulation_steps: int = field(
        default=4, metadata={"help": "Micro batches per optimizer step (a minibatch).", "range": "[1, inf)"}
    )
    num_mini_batches: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps per pass over a batch. Each update samples per_device_train_batch_size x "
            "gradient_accumulation_steps x num_mini_batches answers per process: raise this for large rollouts.",
            "range": "[1, inf)",
        },
    )
    num_ppo_epochs: int = field(
        default=2, metadata={"help": "Passes over each batch of answers.", "range": "[1, inf)"}
    )
    local_rollout_forward_batch_size: int = field(
        default=8,
        metadata={
            "help": "Answers per generate / scoring forward pass (no gradients); a divisor of the answers per update "
            "and process, or at least as many (then one pass).",
            "range": "[1, inf)",
        },
    )
    response_length: int = field(default=200, metadata={"help": "Longest answer, in tokens.", "range": "[1, inf)"})
    max_prompt_length: int = field(
        default=common.MAX_PROMPT_LENGTH,
        metadata={
            "help": "Longest prompt (system prompt + question, in the chat template), in tokens; questions with a "
            "longer one are skipped and counted, here and in compare.py.",
            "range": "[1, inf)",
        },
    )
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Sampling temperature; the log-probs use the same.",
            "range": f"[{cli.MIN_TEMPERATURE}, inf)",
        },
    )
    missing_eos_penalty: float = field(
        default=1.0,
        metadata={
            "help": "Subtracted from the score of an answer cut at response_length before its stop token.",
            "range": f"[0, {cli.MAX_COEFFICIENT}]",
        },
    )
    kl_coef: float = field(
        default=0.05,
        metadata={
            "help": "Weight of the per-token KL penalty to the reference.",
            "range": f"[0, {cli.MAX_COEFFICIENT}]",
        },
    )
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={"help": "k1: log(pi/pi_ref), unbiased; k3: (r - 1) - log r with r = pi_ref/pi, unbiased and >= 0."},
    )
    cliprange: float = field(
        default=0.1, metadata={"help": "PPO's clip range for the policy ratio.", "range": "(0, inf)"}
    )
    cliprange_value: float = field(
        default=0.5, metadata={"help": "Clip range for the value update.", "range": "(0, inf)"}
    )
    vf_coef: float = field(
        default=0.5,
        metadata={"help": "Weight of the value loss against the policy loss.", "range": f"[0, {cli.MAX_COEFFICIENT}]"},
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor.", "range": "[0, 1]"})
    lam: float = field(default=0.95, metadata={"help": "GAE's lambda.", "range": "[0, 1]"})
    lora_r: int = field(default=lora.LORA_R, metadata={"help": "LoRA rank.", "range": "[1, inf)"})
    lora_alpha: int = field(
        default=lora.LORA_ALPHA,
        metadata={"help": "LoRA alpha (the update is scaled by alpha / r).", "range": "(0, inf)"},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Only 0: log-probs are deterministic, so the ratio measures policy change (eval mode).",
            "range": "[0, 1)",
        },
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(lora.LORA_TARGET_MODULES),
        metadata={"help": "The layers that get an adapter."},
    )
    eval_steps: float = field(
        default=0.1,
        metadata={
            "help": "Evaluate on the held-out questions before the first update, every this many updates and after "
            "the last; below 1, that fraction of the updates, rounded up (0.1: ten times a run, as train_rm.py). "
            "At or above the number of updates: before and after training only.",
            "range": "(0, inf)",
        },
    )
    num_eval_questions: int = field(
        default=64,
        metadata={
            "help": "Held-out questions each evaluation answers (the first ones; all if fewer); 0: none.",
            "range": "[0, inf)",
        },
    )
    eval_batch_size: int = field(
        default=32,
        metadata={"help": "Answers per generate / scoring forward pass in evaluation.", "range": "[1, inf)"},
    )
    hacking_length_drop: float = field(
        default=hacking.LENGTH_DROP,
        metadata={
            "help": "Each evaluation's reward-hacking alarm (docs/ppo.md#reward-hacking) names answers shorter than "
            "before training by more than this share; 1: never.",
            "range": "[0, 1]",
        },
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed for the split, the initial weights and sampling.", "range": f"[0, {cli.MAX_SEED}]"},
    )
    bf16: bool = field(
        default=runtime.bf16_available(),
        metadata={"help": "bf16 autocast (on a GPU with bf16 units; fp32 otherwise)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute each decoder layer of the policy and the critic in the update's backward pass instead "
            "of holding its activations: a fraction of the update's memory for one more forward pass per micro "
            "batch (docs/ppo.md, Memory)."
        },
    )
    save_steps: int = field(
        default=100,
        metadata={
            "help": "Save the full training state every this many updates; 0: only at the end.",
            "range": "[0, inf)",
        },
    )
    save_total_limit: int = field(
        default=1,
        metadata={
            "help": "Periodic checkpoints kept, oldest deleted first; 0: all. At 0.5B each is ~10 GB (fp32 weights, "
            "Adam's moments, and the adapter and critic for eval_ppo.py).",
            "range": "[0, inf)",
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint-<update> folder of this run to continue from."}
    )
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={
            "help": "The trackers that get the run's scalars, as the Trainer stages' --report_to: any of "
            f"{', '.join(trackers.PACKAGES)}; none: no tracker; all: every one installed. The chart is drawn from "
            "TensorBoard's files (docs/ppo.md#what-it-logs)."
        },
    )


class PolicyAndValue(nn.Module):
    """The two trained models as one module, so that one optimizer, gradient accumulation and multi-GPU gradient sync
    cover both (as TRL's PolicyAndValueWrapper)."""

    def __init__(self, policy: PeftModel, critic: nn.Module):
        super().__init__()
        self.policy = policy
        self.critic = critic

    def forward(
        self, inputs: dict[str, torch.Tensor], responses: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-prob, entropy, value) of each answer token."""
        logprobs, entropy = sampling.answer_logprobs(self.policy, inputs, responses, temperature)
        return logprobs, entropy, sampling.critic_values(self.critic, inputs, responses.shape[1])


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


def batch_sizes(config: "PPOConfig", num_processes: int) -> BatchSizes:
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


def count_updates(config: "PPOConfig", sizes: BatchSizes, num_questions: int) -> int:
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


def make_optimizer(policy: nn.Module, critic: nn.Module, config: "PPOConfig") -> torch.optim.AdamW:
    """One AdamW over two parameter groups, the policy's adapter at learning_rate and the critic at
    critic_learning_rate (OpenRLHF's actor and critic rates), weight decay as set (TRL's 0 by default). One
    optimizer, so that one scheduler, one accelerate.prepare and one saved state cover both. The fused kernel, as
    transformers' Trainer defaults to (optim adamw_torch_fused): one pass over each tensor instead of one per
    operation, several times faster for a full-parameter critic on a CPU (README, Benchmark)."""
    groups = [
        ("policy", policy, config.learning_rate),
        ("critic", critic, config.critic_learning_rate or config.learning_rate),
    ]
    return torch.optim.AdamW(
        [
            {"name": name, "params": [p for p in model.parameters() if p.requires_grad], "lr": lr}
            for name, model, lr in groups
        ],
        weight_decay=config.weight_decay,
        fused=True,
    )


PPO_STATS = ("approxkl", "clipfrac", "policy_loss", "value_loss", "value_clipfrac", "ratio", "entropy")


def ppo_loss(
    model: PolicyAndValue, micro: dict[str, torch.Tensor], config: "PPOConfig"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of a micro batch of the rollout, policy loss + vf_coef x value loss, and its statistics."""
    m, advantages, old_values, returns = micro["mask"], micro["advantages"], micro["values"], micro["returns"]
    inputs = sampling.sequence_inputs(micro["queries"], micro["query_mask"], micro["responses"], micro["lengths"])
    new_logprobs, entropy, new_values = model(inputs, micro["responses"], config.temperature)

    # Clipped surrogate objective (Schulman et al. 2017, eq. 7).
    log_ratio = (new_logprobs - micro["logprobs"]) * m
    ratio = log_ratio.exp()
    policy_losses = -advantages * ratio
    clipped_losses = -advantages * ratio.clamp(1 - config.cliprange, 1 + config.cliprange)
    policy_loss = masked_mean(torch.max(policy_losses, clipped_losses), m)

    # Clipped value loss: the new value may move at most cliprange_value from the rollout's (the N+ details, #11;
    # CleanRL ppo.py).
    clipped_values = old_values + (new_values - old_values).clamp(-config.cliprange_value, config.cliprange_value)
    value_losses = (new_values - returns) ** 2
    clipped_value_losses = (clipped_values - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.max(value_losses, clipped_value_losses), m)

    with torch.no_grad():
        stats = {
            "approxkl": 0.5 * masked_mean(log_ratio**2, m),
            "clipfrac": masked_mean((clipped_losses > policy_losses).float(), m),
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "value_clipfrac": masked_mean((clipped_value_losses > value_losses).float(), m),
            "ratio": masked_mean(ratio, m),
            # of the distribution sampled from, softmax(logits / temperature), as TRL's PPOTrainer
            "entropy": masked_mean(entropy, m),
        }
    return policy_loss + config.vf_coef * value_loss, stats


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda total: total
) -> torch.Tensor:
    """Zero mean and unit variance over the real tokens; padding stays 0. `all_sum` sums a total over the processes,
    so that the mean and variance are those of the whole batch, every process's answers together."""
    count = all_sum(mask.sum())
    mean = all_sum((values * mask).sum()) / count
    variance = all_sum(((values - mean) ** 2 * mask).sum()) / count
    return (values - mean) * torch.rsqrt(variance + WHITEN_EPS) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, arXiv:1506.02438), (advantages, returns).

    `rewards` and `values` are 0 past each answer's end, so the value after the last token, the terminal state, is 0.
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    return advantages, advantages + values


@torch.no_grad()
def evaluate(
    policy: PeftModel,
    tokenizer,
    reward_fn: sampling.RewardFn,
    prompts: list[list[int]],
    config: PPOConfig,
    accelerator,
) -> tuple[dict[str, float], dict[str, list]]:
    """The policy on the held-out `prompts`: mean score (the reward model's, or reward_fn's; no missing_eos_penalty),
    the lexicon judge's mean score and share judged rude, KL to the SFT model (k1, summed over each answer), mean
    answer length in tokens, share finished at the stop token; and every question, answer and score.

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
    metrics = {
        "eval/score": scores.mean().item(),
        "eval/judge_score": judged.mean().item(),
        "eval/judged_rude": (judged > 0).float().mean().item(),
        "eval/kl": kl.mean().item(),
        "eval/answer_length": batch["lengths"].float().mean().item(),
        "eval/finished": stopped.float().mean().item(),
    }
    samples = {"answer": answers, "score": scores.tolist(), "judge": judged.tolist()}
    return metrics, samples


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


def periodic_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint-<update> folders in `output_dir`, oldest first."""
    updates = {p.name.removeprefix(CHECKPOINT_PREFIX): p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")}
    return [updates[update] for update in sorted((u for u in updates if u.isdigit()), key=int)]


def save_checkpoint(
    path: Path,
    accelerator: Accelerator,
    model: PolicyAndValue,
    tokenizer,
    write_more: Callable[[Path], None] | None = None,
    progress: dict | None = None,
    settings: dict | None = None,
) -> None:
    """The policy's adapter, the record of its base (adapters.record_base) and tokenizer, the critic and tokenizer in
    value/, and what `write_more` writes; given the run's `progress` (counters) and `settings`, also the full
    training state to resume from."""
    unwrapped = accelerator.unwrap_model(model)
    with checkpoints.staged_save(path) as staging:
        if accelerator.is_main_process:
            unwrapped.policy.save_pretrained(staging)
            adapters.record_base(staging)
            tokenizer.save_pretrained(staging)
            unwrapped.critic.save_pretrained(staging / VALUE_DIR)
            tokenizer.save_pretrained(staging / VALUE_DIR)
            if write_more is not None:
                write_more(staging)
        if progress is not None:
            accelerator.save_state(staging / TRAINING_STATE_DIR)  # every process saves its part
            if accelerator.is_main_process:
                (staging / TRAINING_STATE_DIR / PROGRESS_FILE).write_text(json.dumps(progress))
                resuming.write_run_settings(staging, settings)


ADAM_MOMENTS = 2  # AdamW's state per trained parameter: its two moment estimates, in fp32


def periodic_save_bytes(inputs: "Inputs", config: "PPOConfig") -> int:
    """About the bytes of one periodic checkpoint (save_checkpoint with a training state), derived from the models'
    weight headers before any loads: accelerate's state holds every weight of PolicyAndValue (the policy, its adapter
    and the critic, in fp32 as load_models loads them) and AdamW's moments of each trained one (the adapter's and
    the critic's); beside it, the adapter and the critic again (`final_save_bytes`). Under DeepSpeed its fp32 master
    weights add about one more copy of the trained ones."""
    trained = trained_parameters(inputs, config)
    policy = sum(math.prod(shape) for shape in checkpoints.weight_shapes(inputs.policy).values())
    fp32 = torch.float32.itemsize
    return fp32 * (policy + trained) + ADAM_MOMENTS * fp32 * trained + final_save_bytes(inputs, config)


def final_save_bytes(inputs: "Inputs", config: "PPOConfig") -> int:
    """About the bytes of the adapter and the critic in fp32, each with a copy of the policy folder's other files
    (config and tokenizer): the final save, and a periodic one's model part."""
    fp32 = torch.float32.itemsize
    return fp32 * trained_parameters(inputs, config) + 2 * checkpoints.other_files_size(inputs.policy)


def trained_parameters(inputs: "Inputs", config: "PPOConfig") -> int:
    """The parameters PPO trains: the policy's adapter (from the starting point's shapes) and the critic (the value
    model's weights but its unused LM head; its new score head, one row, is left out)."""
    policy = checkpoints.weight_shapes(inputs.policy)
    critic = {name: shape for name, shape in checkpoints.weight_shapes(inputs.value).items() if "lm_head" not in name}
    adapter = lora.adapter_parameters(policy, config.lora_target_modules, config.lora_r)
    return adapter + sum(math.prod(shape) for shape in critic.values())


def run_save_bytes(inputs: "Inputs", config: "PPOConfig", num_updates: int, start_update: int) -> int:
    """About the bytes this run's saves hold at once on the output folder's disk: the periodic checkpoints it writes
    from `start_update` on, at most --save_total_limit + 1 at once (a new one is written before the oldest goes), and
    the final save."""
    saves = (num_updates - 1) // config.save_steps - start_update // config.save_steps if config.save_steps else 0
    held = min(saves, config.save_total_limit + 1) if config.save_total_limit else saves
    return held * periodic_save_bytes(inputs, config) + final_save_bytes(inputs, config)


# ----------------------------------------------------------------------------------------------------------------
# Set-up: the phases of main before the update loop


# The flags that do nothing with --from_base, and without it, each with what the run reads instead: given on the
# command line, each is refused (a --config file's keys are not: one file serves both modes, configs/cpu/ppo.yaml).
UNUSED_WITH_FROM_BASE = {
    "sft_model_path": "the policy and its reference start from --base_model_path, and no SFT model is read",
}
UNUSED_WITHOUT_FROM_BASE = {
    "base_model_path": "the policy and its reference start from the SFT model (--sft_model_path), and the critic "
    "from --value_model_path",
}


def check_arguments(script_args: ScriptArguments, config: PPOConfig) -> None:
    """The checks no flag's range expresses (those are cli.NUMERIC_RANGES'); a flag given that does nothing in the
    mode chosen (UNUSED_WITH_FROM_BASE, UNUSED_WITHOUT_FROM_BASE); --from_base's own output folder; --report_to's
    trackers, as names."""
    if script_args.eval_fraction == 0:
        raise errors.ArgumentError(
            "train_ppo.py holds questions out for compare.py: --eval_fraction must be above 0."
        )
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


def make_accelerator(config: PPOConfig) -> tuple[Accelerator, bool]:
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


def resume_point(resume: Path | None, run: dict, settings: dict) -> dict:
    """The counters saved in the checkpoint to resume from (update, TensorBoard run), after checking that it was
    saved by a run of these settings and batch shape; {} for a new run."""
    if resume is None:
        return {}
    progress_file = resume / TRAINING_STATE_DIR / PROGRESS_FILE
    if not progress_file.is_file():
        raise errors.PipelineError(
            f"{resume} holds no training state ({TRAINING_STATE_DIR}/{PROGRESS_FILE}): only the checkpoint-<update> "
            "folders that --save_steps writes can be resumed from (the final checkpoint holds the model only)."
        )
    saved = checkpoints.read_checkpoint_json(
        progress_file, "Resume from another checkpoint-<update> folder, or start a new run.", (*run, "update")
    )
    if {key: saved[key] for key in run} != run:
        raise errors.PipelineError(
            f"{resume} was saved by a run of {saved['num_updates']} updates of {saved['batch_size']} answers on "
            f"{saved['processes']} process(es); this one has {run['num_updates']} of {run['batch_size']} on "
            f"{run['processes']}. Resume with the same batch settings and epochs, on as many processes: accelerate "
            "launch --num_processes."
        )
    resuming.check_resume(resume, settings)
    return saved


def training_state_files(accelerator: Accelerator) -> dict[str, str]:
    """{file: kind of resuming.TRAINING_STATES} of what accelerate's save_state writes into TRAINING_STATE_DIR besides
    the weights: the optimizer (under DeepSpeed inside the folder of its own checkpoint, not checked here), the
    schedule and every process's random state."""
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    return (
        ({} if deepspeed else {OPTIMIZER_FILE: "optimizer"})
        | {SCHEDULER_FILE: "scheduler"}
        | {RNG_FILE.format(i): "rng" for i in range(accelerator.num_processes)}
    )


def state_to_load(state_dir: Path, left_out: list[str], optimizer, scheduler) -> Path:
    """The folder to load the training state from: `state_dir`, or, for the states --resume_resets_state starts
    afresh (`left_out`), a view of it with the new optimizer's and schedule's own states in their place (accelerate's
    load_state needs both files; a random state it lacks it leaves as set_seed set it)."""
    if not left_out:
        return state_dir
    view = resuming.resume_view(state_dir, left_out)
    for name, fresh in ((OPTIMIZER_FILE, optimizer), (SCHEDULER_FILE, scheduler)):
        if name in left_out:
            torch.save(fresh.state_dict(), view / name)
    return view


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


def check_inputs(script_args: ScriptArguments, held_out: Dataset, output_dir: str, own_reward: bool) -> Inputs:
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


def check_lengths(inputs: Inputs, config: PPOConfig, own_reward: bool) -> None:
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
    inputs: Inputs, config: PPOConfig, reward_fn: sampling.RewardFn | None, device, rollout_chunk: int
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


def divergence(update: int, problem: str, config: PPOConfig, last_state: Path | None) -> errors.PipelineError:
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
    update: int, start_update: int, start: Path | str, config: PPOConfig, last_state: Path | None
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
    overflowing = Path(config.output_dir) / f"{CHECKPOINT_PREFIX}{update}"  # if it was saved, it holds them
    return divergence(update + 1, problem, config, None if last_state == overflowing else last_state)


def stop_if_diverged(
    update: int,
    metrics: dict[str, torch.Tensor],
    model: nn.Module,
    config: PPOConfig,
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
    config: PPOConfig
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
        metrics["eval/judge_score"],
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
    tqdm.write(
        f"eval at update {update}: score {metrics['eval/score']:+.3f}, judge {metrics['eval/judge_score']:+.2f} "
        f"({metrics['eval/judged_rude']:.2f} judged rude), KL {metrics['eval/kl']:.3f}, "
        f"{metrics['eval/answer_length']:.1f} tokens, {metrics['eval/finished']:.2f} finished"
    )
    if signs:
        line = hacking.alarm(signs, "the policy before training")
        tqdm.write(line)
        run.run_log.text("eval/reward_hacking", line, update)


def main(script_args: ScriptArguments, config: PPOConfig, reward_fn: sampling.RewardFn | None = None) -> None:
    """Train the policy; `reward_fn` replaces the reward model (a programmatic reward, as in the tests)."""
    # Arguments, the accelerator and the update's sizes; every division exact.
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
    saved = resume_point(resume, run, settings)
    start_update = saved.get("update", 0)
    left_out = []
    if resume is not None:
        state_dir, files = resume / TRAINING_STATE_DIR, training_state_files(accelerator)
        accept, rng_keys = script_args.resume_resets_state, resuming.RNG_KEYS["accelerate"]
        left_out = resuming.check_training_state(state_dir, files, accept, rng_keys)
    inputs = check_inputs(script_args, held_out, config.output_dir, own_reward=reward_fn is not None)
    outputs.check_room(config.output_dir, run_save_bytes(inputs, config, num_updates, start_update))
    check_lengths(inputs, config, own_reward=reward_fn is not None)
    lifecycle.lock_output_dir(config.output_dir)
    stage = "ppo_base" if script_args.from_base else "ppo"
    if "tensorboard" in config.report_to:  # its run folder is made after the models load: checked before
        charts.check_tensorboard_folder(stage)

    # Models, optimizer, schedule.
    tokenizer, policy, critic, reward_fn = load_models(
        inputs, config, reward_fn, accelerator.device, sizes.rollout_chunk
    )
    common.refuse_control_tokens(data, script_args.dataset_name, tokenizer)
    model = PolicyAndValue(policy, critic).eval()
    if config.gradient_checkpointing:
        for part in (policy.get_base_model(), critic):
            checkpoint_layers(part)
    optimizer = make_optimizer(policy, critic, config)
    # Stepped once per update, outside accelerate (its wrapper would step once per process).
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, config.warmup_steps, num_updates)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    set_seed(config.seed, device_specific=True)  # seed + process index: each process samples its own answers
    if resume is not None:
        accelerator.load_state(state_to_load(resume / TRAINING_STATE_DIR, left_out, optimizer, scheduler))
    unwrapped = accelerator.unwrap_model(model)

    # Prompts, in one shuffled order per epoch for the whole run; the held-out ones for evaluation.
    prompts, _ = common.prompts_within(
        tokenizer, train_rows, script_args.system_prompt, config.max_prompt_length, accelerator.print
    )
    order = PromptOrder(len(prompts), config.seed)
    eval_rows = held_out.select(range(min(config.num_eval_questions, len(held_out))))
    eval_prompts, eval_rows = (
        common.prompts_within(
            tokenizer, eval_rows, script_args.system_prompt, config.max_prompt_length, accelerator.print
        )
        if len(eval_rows)
        else ([], eval_rows)
    )

    # Logging, to --report_to's trackers (run_log: None on every process but the main one). A resumed run continues
    # the TensorBoard run its checkpoint names, dropping what that run logged after the checkpoint (purge_step), so
    # its curves and chart cover every update once; the other trackers start a new run from the checkpoint's update.
    run_dir = (
        charts.tensorboard_run(stage, saved.get("tensorboard_run")) if "tensorboard" in config.report_to else None
    )
    run_name = f"{stage} {run_dir.name if run_dir else time.strftime('%Y-%m-%d %H-%M-%S')}"
    # The TensorBoard run each periodic checkpoint names: this one, or, logging without TensorBoard, the checkpoint's
    # (a later resume with TensorBoard continues it).
    tensorboard_run = str(run_dir) if run_dir else saved.get("tensorboard_run")
    run_log = trackers.start(
        accelerator,
        config.report_to,
        run_name,
        asdict(script_args) | asdict(config),
        run_dir,
        purge_step=start_update + 1 if resume else None,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(
        f"PPO of {inputs.policy}: {len(prompts)} questions, {num_updates} updates of {batch_size} answers, "
        f"{trainable:,} trained parameters (LoRA + critic); {trackers.describe(config.report_to, run_dir, run_name)}"
        + (f"; resuming at update {start_update} from {resume}" if resume else "")
    )
    if eval_prompts:
        accelerator.print(
            f"Evaluating on {len(eval_prompts)} held-out questions before the first update, every {eval_every} "
            "updates and after the last (eval/ in the trackers' scalars)."
        )
    evaluation = Evaluation(
        unwrapped.policy, tokenizer, reward_fn, eval_prompts, eval_rows, config, accelerator, run_log
    )
    if "eval_start" in saved:  # a resumed run's alarm compares with the run's own start, not with where it resumed
        evaluation.start = hacking.HeldOut(**saved["eval_start"])
    progress = tqdm(
        total=num_updates * batch_size,
        initial=start_update * batch_size,
        unit="episode",
        disable=not accelerator.is_main_process,
    )
    if eval_prompts and start_update == 0:  # the starting point itself, at KL 0
        evaluate_and_log(0, evaluation)
    meter = PhaseMeter(accelerator.device)
    run_started = time.perf_counter()
    last_state = resume  # the last finite state this run saved, or started from
    for update in range(start_update, num_updates):
        batch_prompts = [prompts[i] for i in process_share(order, update, batch_size, accelerator)]

        # 1. Generate: sample an answer to each prompt from the current policy (fp32 weights, no autocast: the
        #    per-step weight casts would cost more than bf16 saves at this batch size).
        update_cpu = time.process_time()  # time/cpu
        with meter("generation"):
            try:
                with sampling.merged(unwrapped.policy) as policy:
                    batch = sampling.generate(
                        policy,
                        tokenizer,
                        batch_prompts,
                        config.response_length,
                        config.temperature,
                        sizes.rollout_chunk,
                        accelerator.device,
                    )
            except RuntimeError as error:
                if SAMPLING_FAILURE not in str(error):
                    raise
                if run_log is not None:
                    run_log.finish()  # the curves up to the divergence, on disk
                raise unsampleable(update, start_update, resume or inputs.policy, config, last_state) from None
        responses, lengths = batch["responses"], batch["lengths"]
        mask = sampling.answer_mask(lengths, responses.shape[1]).float()

        # 2. Score: the reward model reads each answer at its last token; an answer cut before its stop token loses
        #    missing_eos_penalty, so the policy learns to finish within response_length. The same forward passes give
        #    the policy's and the reference's log-prob of each answer token and the critic's value before it.
        with meter("scoring"), accelerator.autocast():
            scores, stopped = sampling.score_answers(
                reward_fn,
                batch["queries"],
                batch["query_mask"],
                responses,
                lengths,
                tokenizer,
                config.missing_eos_penalty,
            )
            batch |= sampling.forward_rollout(
                unwrapped.policy, unwrapped.critic, batch, config.temperature, sizes.rollout_chunk
            )

        # 3. KL: a per-token penalty -kl_coef * KL(pi || pi_ref) keeps the policy near its starting point, and the
        #    score is added at the answer's last token (Ziegler et al. 2019, arXiv:1909.08593).
        logprobs, ref_logprobs, values = batch["logprobs"] * mask, batch["ref_logprobs"] * mask, batch["values"] * mask
        kl = sampling.kl_estimate(logprobs, ref_logprobs, config.kl_estimator) * mask
        non_score_reward = -config.kl_coef * kl
        rewards = non_score_reward.clone()
        rewards[torch.arange(len(rewards)), lengths - 1] += scores

        # 4. Advantages: GAE over each answer, then whitened over the real tokens of the whole batch, every process's
        #    answers together (padding stays 0).
        advantages, returns = gae(rewards, values, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask, lambda total: accelerator.reduce(total, reduction="sum"))

        # 5. Update: num_ppo_epochs passes over the batch in num_mini_batches shuffled minibatches; one optimizer
        #    step per minibatch, accumulated over micro batches of per_device_train_batch_size, each cut to its
        #    longest prompt and answer; each model's gradient norm clipped on its own (as OpenRLHF's actor and critic).
        rollout = {
            "queries": batch["queries"], "query_mask": batch["query_mask"], "responses": responses, "lengths": lengths,
            "mask": mask, "logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns,
        }  # fmt: skip
        stats = {key: [] for key in (*PPO_STATS, "policy_grad_norm", "critic_grad_norm")}
        with meter("optimization"):
            for _ in range(config.num_ppo_epochs):
                for mini_batch in torch.randperm(sizes.local_batch).split(sizes.mini_batch):
                    for rows in mini_batch.split(config.per_device_train_batch_size):
                        with accelerator.accumulate(model):
                            loss, micro_stats = ppo_loss(model, sampling.trimmed(rollout, rows), config)
                            accelerator.backward(loss)
                            if accelerator.sync_gradients and per_model_clipping:
                                for name, part in (("policy", unwrapped.policy), ("critic", unwrapped.critic)):
                                    norm = accelerator.clip_grad_norm_(part.parameters(), config.max_grad_norm)
                                    stats[f"{name}_grad_norm"].append(norm)
                            optimizer.step()
                            optimizer.zero_grad()
                        for key, value in micro_stats.items():
                            stats[key].append(value)
            scheduler.step()

        # Log the update, averaged over the processes (val/num_eos_tokens summed: a count; memory/*_gib the
        # highest: memory/<phase>_gib each phase's peak, memory/peak_gib the update's). time/cpu: the update's CPU
        # seconds, every thread's, steadier than wall time on a shared machine.
        times = meter.seconds | {"cpu": time.process_time() - update_cpu}
        metrics = update_metrics(scores, stopped, kl, non_score_reward, logprobs, lengths, stats, times)
        metrics = {key: value.detach().float().to(accelerator.device) for key, value in metrics.items()}
        metrics = accelerator.reduce(metrics, reduction="mean")
        metrics["val/num_eos_tokens"] = accelerator.reduce(stopped.float().sum(), reduction="sum")
        peaks = accelerator.gather(torch.tensor([[*meter.peak_gib.values()]], device=accelerator.device)).amax(0)
        metrics |= {f"memory/{phase}_gib": peak for phase, peak in zip(meter.peak_gib, peaks)}
        metrics["memory/peak_gib"] = peaks.max()
        if run_log is not None:
            scalars = {key: value.item() for key, value in metrics.items()}
            scalars |= {"lr": scheduler.get_last_lr()[0], "episode": (update + 1) * batch_size}
            run_log.log(scalars, update + 1)
        progress.update(batch_size)
        progress.set_postfix(
            score=f"{metrics['objective/scores'].item():+.2f}", kl=f"{metrics['objective/kl'].item():.2f}"
        )
        stop_if_diverged(update + 1, metrics, unwrapped, config, last_state, run_log)
        if eval_prompts and ((update + 1) % eval_every == 0 or update + 1 == num_updates):
            evaluate_and_log(update + 1, evaluation)

        if config.save_steps and (update + 1) % config.save_steps == 0 and update + 1 < num_updates:
            last_state = Path(config.output_dir) / f"{CHECKPOINT_PREFIX}{update + 1}"
            save_checkpoint(
                last_state,
                accelerator,
                model,
                tokenizer,
                progress=run
                | {"update": update + 1}
                | ({"tensorboard_run": tensorboard_run} if tensorboard_run else {})
                | ({"eval_start": asdict(evaluation.start)} if evaluation.start else {}),
                settings=settings,
            )
            if accelerator.is_main_process and config.save_total_limit:
                for old in periodic_checkpoints(Path(config.output_dir))[: -config.save_total_limit]:
                    shutil.rmtree(old)
    progress.close()
    runtime = time.perf_counter() - run_started

    def held_out_and_results(folder: Path) -> None:  # for compare.py
        outputs.save_held_out(held_out, script_args.system_prompt, folder)
        outputs.save_train_results(folder, runtime, (num_updates - start_update) * batch_size / runtime)

    save_checkpoint(Path(config.output_dir), accelerator, model, tokenizer, write_more=held_out_and_results)
    if accelerator.is_main_process:
        run_log.finish()
        curves = charts.curves_note(
            run_dir, CHART_TAGS, f"PPO: {inputs.policy}", config.report_to, xlabel="update"
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
            f"Adapter saved to {config.output_dir}, critic to {Path(config.output_dir) / VALUE_DIR}{curves}. "
            f"Compare it with every other method: {compare}"
        )


def make_parser() -> cli.Parser:
    return cli.Parser((ScriptArguments, PPOConfig))


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
