"""Stage 3, PPO: the SFT model with a LoRA adapter learns to write answers the reward model scores high, held near
the SFT model by a KL penalty (InstructGPT's RL step, Ouyang et al. 2022, arXiv:2203.02155; PPO, Schulman et al. 2017,
arXiv:1707.06347). The implementation details follow "The N+ Implementation Details of RLHF with PPO" (Huang et al.
2024, arXiv:2403.17031) and CleanRL's ppo.py; the loop below is the algorithm, one numbered step per block. The
run's harness, marked "skip on first read" where main calls it, lives in hfppo/: ppo_setup.py (checks, models,
prompts), ppo_saves.py (checkpoints, resume) and ppo_monitor.py (figures, evaluation, divergence stops).

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

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from torch import nn
from transformers import get_scheduler

import common
from hfppo import (
    cli,
    hacking,
    lifecycle,
    lora,
    paths,
    ppo_monitor,
    ppo_saves,
    ppo_setup,
    runtime,
    sampling,
    tiny,
    trackers,
)
from hfppo.meter import PhaseMeter

# ----------------------------------------------------------------------------------------------------------------
# Config: every field below is a flag and a --config key; --tiny sets TINY_PRESET's.

# transformers' SchedulerType less those that need what the loop does not give them (a metric to step on, as
# reduce_lr_on_plateau and greedy, or lr_scheduler_kwargs, as the min_lr and warmup_stable_decay ones).
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
)  # fmt: skip

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


# ----------------------------------------------------------------------------------------------------------------
# ALGO LOGIC: the policy and value models, PPO's losses, an update's phases (rollout, ppo_update), and main.


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


WHITEN_EPS = 1e-8


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


def rollout(
    model: PolicyAndValue,
    tokenizer,
    reward_fn: sampling.RewardFn,
    prompts: list[list[int]],
    config: PPOConfig,
    chunk: int,
    accelerator: Accelerator,
    meter: PhaseMeter,
    sampling_guard: AbstractContextManager,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Steps 1-4 of an update on this process's `prompts`, `chunk` answers at a time: (the rollout the update trains
    on, the figures it logs). `model` is unwrapped; `sampling_guard` wraps the sampling (ppo_monitor's stop for a
    policy that cannot be sampled from)."""
    # 1. Generate: sample an answer to each prompt from the current policy (fp32 weights, no autocast: the
    #    per-step weight casts would cost more than bf16 saves at this batch size).
    with meter("generation"), sampling_guard:
        with sampling.merged(model.policy) as policy:
            batch = sampling.generate(
                policy, tokenizer, prompts, config.response_length, config.temperature, chunk, accelerator.device
            )
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
        batch |= sampling.forward_rollout(model.policy, model.critic, batch, config.temperature, chunk)

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
    experience = {
        "queries": batch["queries"], "query_mask": batch["query_mask"], "responses": responses, "lengths": lengths,
        "mask": mask, "logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns,
    }  # fmt: skip
    return experience, {"scores": scores, "stopped": stopped, "kl": kl, "non_score_reward": non_score_reward}


def ppo_update(
    model: nn.Module,
    experience: dict[str, torch.Tensor],
    config: PPOConfig,
    sizes: ppo_setup.BatchSizes,
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    per_model_clipping: bool,
) -> dict[str, list]:
    """Step 5 of an update, on the rollout `experience`; each micro batch's statistics (PPO_STATS and the gradient
    norms). `model` is the prepared PolicyAndValue."""
    # 5. Update: num_ppo_epochs passes over the batch in num_mini_batches shuffled minibatches; one optimizer
    #    step per minibatch, accumulated over micro batches of per_device_train_batch_size, each cut to its
    #    longest prompt and answer; each model's gradient norm clipped on its own (as OpenRLHF's actor and critic).
    unwrapped = accelerator.unwrap_model(model)
    stats = {key: [] for key in (*PPO_STATS, "policy_grad_norm", "critic_grad_norm")}
    for _ in range(config.num_ppo_epochs):
        for mini_batch in torch.randperm(sizes.local_batch).split(sizes.mini_batch):
            for rows in mini_batch.split(config.per_device_train_batch_size):
                with accelerator.accumulate(model):
                    loss, micro_stats = ppo_loss(model, sampling.trimmed(experience, rows), config)
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
    return stats


def main(script_args: ScriptArguments, config: PPOConfig, reward_fn: sampling.RewardFn | None = None) -> None:
    """Train the policy; `reward_fn` replaces the reward model (a programmatic reward, as in the tests)."""
    # --- harness: skip on first read. Every check that needs no model, in the order that fails fastest; the models.
    plan = ppo_setup.plan_run(script_args, config, own_reward=reward_fn is not None)
    accelerator, sizes, num_updates, start_update = plan.accelerator, plan.sizes, plan.num_updates, plan.start_update
    tokenizer, policy, critic, reward_fn = ppo_setup.load_models(
        plan.inputs, config, reward_fn, accelerator.device, sizes.rollout_chunk
    )
    common.refuse_control_tokens(plan.data, script_args.dataset_name, tokenizer)

    # ALGO LOGIC: the policy and the critic as one module, one optimizer and one schedule over both.
    model = PolicyAndValue(policy, critic).eval()
    if config.gradient_checkpointing:
        for part in (policy.get_base_model(), critic):
            ppo_setup.checkpoint_layers(part)
    optimizer = make_optimizer(policy, critic, config)
    # Stepped once per update, outside accelerate (its wrapper would step once per process).
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, config.warmup_steps, num_updates)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    set_seed(config.seed, device_specific=True)  # seed + process index: each process samples its own answers
    if plan.resume is not None:
        state_dir = plan.resume / ppo_saves.TRAINING_STATE_DIR
        accelerator.load_state(ppo_saves.state_to_load(state_dir, plan.left_out, optimizer, scheduler))
    unwrapped = accelerator.unwrap_model(model)

    # --- harness: skip on first read. The prompts in one shuffled order per epoch, the held-out ones for evaluation;
    # the trackers and the progress bar; the starting point evaluated, at KL 0.
    prompts, order, eval_prompts, eval_rows = ppo_setup.prompt_sets(tokenizer, plan, script_args.system_prompt, config)
    logs = ppo_monitor.start_logging(
        plan, script_args, config, model, tokenizer, reward_fn, prompts, eval_prompts, eval_rows
    )
    if eval_prompts and start_update == 0:
        ppo_monitor.evaluate_and_log(0, logs.evaluation)
    meter = PhaseMeter(accelerator.device)
    run_started = time.perf_counter()
    last_state = plan.resume  # the last finite state this run saved, or started from

    # ALGO LOGIC: the updates, each steps 1-5 on this process's share of the update's prompts.
    for update in range(start_update, num_updates):
        batch_prompts = [prompts[i] for i in ppo_setup.process_share(order, update, sizes.batch, accelerator)]
        update_cpu = time.process_time()  # time/cpu
        start = plan.resume or plan.inputs.policy
        guard = ppo_monitor.unsampleable_stops(update, start_update, start, config, last_state, logs.run_log)
        experience, figures = rollout(
            unwrapped, tokenizer, reward_fn, batch_prompts, config, sizes.rollout_chunk, accelerator, meter, guard
        )
        with meter("optimization"):
            stats = ppo_update(
                model, experience, config, sizes, accelerator, optimizer, scheduler, plan.per_model_clipping
            )

        # --- harness: skip on first read. Log the update, stop on divergence, evaluate, save.
        lr = scheduler.get_last_lr()[0]
        metrics = ppo_monitor.log_update(
            update + 1, figures, experience, stats, meter, update_cpu, accelerator, lr, sizes.batch, logs
        )
        ppo_monitor.stop_if_diverged(update + 1, metrics, unwrapped, config, last_state, logs.run_log)
        if eval_prompts and ((update + 1) % plan.eval_every == 0 or update + 1 == num_updates):
            ppo_monitor.evaluate_and_log(update + 1, logs.evaluation)
        if config.save_steps and (update + 1) % config.save_steps == 0 and update + 1 < num_updates:
            progress = ppo_monitor.checkpoint_progress(plan.run, update + 1, logs)
            last_state = ppo_saves.save_periodic(
                update + 1, accelerator, model, tokenizer, config, progress, plan.settings
            )
    logs.progress.close()
    seconds, episodes = time.perf_counter() - run_started, (num_updates - start_update) * sizes.batch
    ppo_saves.save_final(
        accelerator, model, tokenizer, config, plan.held_out, script_args.system_prompt, seconds, episodes
    )
    if accelerator.is_main_process:
        ppo_monitor.say_done(logs, plan, script_args, config)


def make_parser() -> cli.Parser:
    return cli.Parser((ScriptArguments, PPOConfig))


if __name__ == "__main__":
    runtime.setup()
    with lifecycle.user_errors():
        main(*cli.parse_args(make_parser(), TINY_PRESET))
