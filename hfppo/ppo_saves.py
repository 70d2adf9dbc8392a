"""PPO's saves (train_ppo.py): the periodic checkpoints with their training state, their pruning, the final save,
the room they need, and resuming from one. Not a script: train_ppo.py calls it, passing its PPOConfig as `config`."""

import json
import logging
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from hfppo import adapters, checkpoints, errors, lora, outputs, resuming

if TYPE_CHECKING:
    from hfppo.ppo_setup import Inputs

CHECKPOINT_PREFIX = "checkpoint-"  # periodic checkpoints: checkpoint-<update>
# In each periodic checkpoint: accelerate's save_state (weights, optimizer, scheduler, every process's RNG) and the
# run's counters, so a resumed run continues as if never stopped, under DDP and DeepSpeed alike.
TRAINING_STATE_DIR = "training_state"
PROGRESS_FILE = "progress.json"
# accelerate's names in it for the optimizer, the schedule (registered for checkpointing: the first custom object)
# and each process's random state.
OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE = "optimizer.bin", "custom_checkpoint_0.pkl", "random_states_{}.pkl"
VALUE_DIR = "value"  # the critic, inside each PPO checkpoint: TRL's PPOTrainer never saved it (trl#3293)

# A library message that says nothing a user can act on, silenced by its exact text where it is raised (common.py
# silences peft's is_gradient_checkpointing warning for every script):
# - accelerate's save_state leaves the LM head out of the saved weights because it is the embedding matrix itself
#   (tie_word_embeddings, as in Qwen2.5-0.5B), and load_state fills both from that one copy: the resume test checks it.
logging.getLogger("accelerate.utils.other").addFilter(
    lambda record: not re.search(r"Removed shared tensor \{'[\w.]*lm_head\.weight'\}", record.getMessage())
)


def periodic_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint-<update> folders in `output_dir`, oldest first."""
    updates = {p.name.removeprefix(CHECKPOINT_PREFIX): p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")}
    return [updates[update] for update in sorted((u for u in updates if u.isdigit()), key=int)]


def save_checkpoint(
    path: Path,
    accelerator: Accelerator,
    model: nn.Module,
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


def periodic_save_bytes(inputs: "Inputs", config) -> int:
    """About the bytes of one periodic checkpoint (save_checkpoint with a training state), derived from the models'
    weight headers before any loads: accelerate's state holds every weight of PolicyAndValue (the policy, its adapter
    and the critic, in fp32 as load_models loads them) and AdamW's moments of each trained one (the adapter's and
    the critic's); beside it, the adapter and the critic again (`final_save_bytes`). Under DeepSpeed its fp32 master
    weights add about one more copy of the trained ones."""
    trained = trained_parameters(inputs, config)
    policy = sum(math.prod(shape) for shape in checkpoints.weight_shapes(inputs.policy).values())
    fp32 = torch.float32.itemsize
    return fp32 * (policy + trained) + ADAM_MOMENTS * fp32 * trained + final_save_bytes(inputs, config)


def final_save_bytes(inputs: "Inputs", config) -> int:
    """About the bytes of the adapter and the critic in fp32, each with a copy of the policy folder's other files
    (config and tokenizer): the final save, and a periodic one's model part."""
    fp32 = torch.float32.itemsize
    return fp32 * trained_parameters(inputs, config) + 2 * checkpoints.other_files_size(inputs.policy)


def trained_parameters(inputs: "Inputs", config) -> int:
    """The parameters PPO trains: the policy's adapter (from the starting point's shapes) and the critic (the value
    model's weights but its unused LM head; its new score head, one row, is left out)."""
    policy = checkpoints.weight_shapes(inputs.policy)
    critic = {name: shape for name, shape in checkpoints.weight_shapes(inputs.value).items() if "lm_head" not in name}
    adapter = lora.adapter_parameters(policy, config.lora_target_modules, config.lora_r)
    return adapter + sum(math.prod(shape) for shape in critic.values())


def run_save_bytes(inputs: "Inputs", config, num_updates: int, start_update: int) -> int:
    """About the bytes this run's saves hold at once on the output folder's disk: the periodic checkpoints it writes
    from `start_update` on, at most --save_total_limit + 1 at once (a new one is written before the oldest goes), and
    the final save."""
    saves = (num_updates - 1) // config.save_steps - start_update // config.save_steps if config.save_steps else 0
    held = min(saves, config.save_total_limit + 1) if config.save_total_limit else saves
    return held * periodic_save_bytes(inputs, config) + final_save_bytes(inputs, config)


# ----------------------------------------------------------------------------------------------------------------
# Set-up: the phases of main before the update loop


def save_periodic(
    update: int,
    accelerator: Accelerator,
    model: nn.Module,
    tokenizer,
    config,
    progress: dict,
    settings: dict,
) -> Path:
    """The periodic checkpoint of `update` (checkpoint-<update>, with the training state and the run's `progress`),
    then, past --save_total_limit, the oldest ones removed (the new one is written first); its folder."""
    state = Path(config.output_dir) / f"{CHECKPOINT_PREFIX}{update}"
    save_checkpoint(state, accelerator, model, tokenizer, progress=progress, settings=settings)
    if accelerator.is_main_process and config.save_total_limit:
        for old in periodic_checkpoints(Path(config.output_dir))[: -config.save_total_limit]:
            shutil.rmtree(old)
    return state


def save_final(
    accelerator: Accelerator,
    model: nn.Module,
    tokenizer,
    config,
    held_out,
    system_prompt: str,
    runtime: float,
    episodes: int,
) -> None:
    """The final save in --output_dir: the adapter, the critic, and for compare.py the held-out questions
    and the run's time (`episodes` trained in `runtime` seconds)."""

    def held_out_and_results(folder: Path) -> None:  # for compare.py
        outputs.save_held_out(held_out, system_prompt, folder)
        outputs.save_train_results(folder, runtime, episodes / runtime)

    save_checkpoint(Path(config.output_dir), accelerator, model, tokenizer, write_more=held_out_and_results)


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
