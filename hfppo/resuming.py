"""Resuming a run: the settings it may change, and the training state it must find whole."""

import atexit
import dataclasses
import json
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import load as load_state_file

from hfppo import charts, checkpoints, errors, outputs

# Settings that change neither a run's data, nor its randomness, nor its optimisation: where it writes, what and how
# often it logs, saves and evaluates, and whether it recomputes activations to save memory (the same arithmetic). A
# resumed run may change these, and nothing else.
RESUMABLE_SETTINGS = re.compile(
    r"output_dir|overwrite_output_dir|resume_from_checkpoint|run_name|report_to|logging_.*|log_.*|save_.*|"
    r"resume_resets_state|"  # what a resume may start afresh (check_training_state), not how the run trains
    r"eval_(?!fraction$).*|"  # how often the held-out rows are evaluated, but not which rows they are
    r"per_device_eval_batch_size|push_to_hub|hub_.*|dataloader_num_workers|dataloader_pin_memory|disable_tqdm|tiny|"
    r"local_rank|num_eval_questions|gradient_checkpointing.*"
)
# Settings that decide only what a run reports about itself, never its data or its updates: the reward-hacking alarm's
# threshold (PPO compares each evaluation's answers with it, after the update), the completions GRPO prints, what the
# Trainer measures of itself. Named one by one, as the pattern above cannot say this; a resumed run may change them.
REPORTING_SETTINGS = frozenset(
    {"hacking_length_drop", "num_completions_to_print", "skip_memory_metrics", "include_num_input_tokens_seen"}
)
RUN_SETTINGS_FILE = checkpoints.RUN_SETTINGS_FILE  # in each periodic checkpoint, its last file


def resumable(name: str) -> bool:
    """Whether a resumed run may change the setting `name` (RESUMABLE_SETTINGS, REPORTING_SETTINGS)."""
    return bool(RESUMABLE_SETTINGS.fullmatch(name)) or name in REPORTING_SETTINGS


def run_settings(*configs) -> dict:
    """Every setting of the run's config dataclasses that a resumed run must keep, as JSON values."""
    return {
        f.name: json.loads(json.dumps(getattr(config, f.name), default=str))
        for config in configs
        for f in dataclasses.fields(config)
        if not resumable(f.name)
    }


def check_resume(checkpoint: str | Path | None, settings: dict) -> None:
    """Refuse to resume from `checkpoint` with `settings` other than those it was saved with, or with a damaged JSON
    file (no-op without one)."""
    if checkpoint is None:
        return
    checkpoints.finish_interrupted_save(Path(checkpoint))  # a periodic save killed during its swap: put in place
    file = Path(checkpoint) / RUN_SETTINGS_FILE
    if not file.is_file():
        raise errors.PipelineError(
            f"{checkpoint} holds no {RUN_SETTINGS_FILE}: it is not a checkpoint-<step> folder that this pipeline's "
            "training saved, so whether this run would continue it with the same settings cannot be checked. "
            "Resume from one of those, or start a new run."
        )
    remedy = "Resume from another checkpoint-<step> folder, or start a new run."
    saved = checkpoints.read_checkpoint_json(file, remedy)
    for name, keys in checkpoints.CHECKPOINT_JSON.items():  # the model's own files, which the resume loads
        if (Path(checkpoint) / name).is_file():
            checkpoints.read_checkpoint_json(Path(checkpoint) / name, remedy, keys)
    changed = [
        f"--{key} {saved.get(key)!r} now {settings.get(key)!r}"
        for key in sorted(saved.keys() | settings.keys())
        if saved.get(key) != settings.get(key) and not resumable(key)  # saved before it was resumable: no matter
    ]
    if changed:
        raise errors.PipelineError(
            f"{checkpoint} was saved by a run with other settings ({'; '.join(changed[:6])}"
            f"{f'; and {len(changed) - 6} more' if len(changed) > 6 else ''}). A resumed run must keep every setting "
            "that changes its data, randomness or optimisation: resume with the settings it was saved with, or start "
            "a new run."
        )


# What a resume reads besides the weights, by kind: what the state is, and what a resume without it starts afresh.
# The Trainer skips a missing optimizer.pt, scheduler.pt or rng_state.pth without a word, and accelerate's load_state
# (train_ppo.py) a random state it cannot read; check_training_state says it first, or refuses.
TRAINING_STATES = {
    "optimizer": (
        "the optimizer's state",
        "the optimizer starts afresh (Adam's moment estimates from zero: the first steps after the resume about as "
        "large as the learning rate, not as the run's)",
    ),
    "scheduler": ("the learning-rate schedule", "the learning-rate schedule starts again from its first step"),
    "rng": (
        "the random generators' state",
        "the random numbers drawn from there on (data order, sampling, dropout) differ from the uninterrupted run's, "
        "so its result is not that run's",
    ),
    "step": (
        "the step it was saved at",
        "the Trainer starts again at step 0 and trains every step again from the checkpoint's weights",
    ),
}
# The states' keys as each library saves them: the Trainer's rng_state.pth and accelerate's random_states_<i>.pkl hold
# Python's, NumPy's and torch's CPU generator (in that order here), and each GPU's where there is one.
RNG_KEYS = {
    "trainer": ("python", "numpy", "cpu", "cuda"),
    "accelerate": ("random_state", "numpy_random_seed", "torch_manual_seed", "torch_cuda_manual_seed"),
}
RESETS_FLAG = "--resume_resets_state"


def trainer_state_files(checkpoint: Path, world_size: int) -> dict[str, str]:
    """{file: kind of TRAINING_STATES} of what the Trainer resumes from a checkpoint-<step> besides its weights
    (Trainer._save_checkpoint): its optimizer and scheduler (under DeepSpeed, whose global_step<N> folder holds
    them, only the scheduler), each process's random state and the step count."""
    deepspeed = any(checkpoint.glob("global_step*"))
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    return (
        ({} if deepspeed else {"optimizer.pt": "optimizer"})
        | {"scheduler.pt": "scheduler"}
        | dict.fromkeys(rng, "rng")
        | {"trainer_state.json": "step"}
    )


def state_problem(file: Path, kind: str, rng_keys: tuple[str, ...] = RNG_KEYS["trainer"]) -> str | None:
    """Why `file`, a training state of `kind` (TRAINING_STATES), cannot be resumed from, or None: it is missing, or
    torch cannot read it (loaded as the Trainer loads it, weights only; the optimizer's memory-mapped, not read into
    memory), or it holds no state of its kind (a random state is set into spare generators, which checks it whole)."""
    if not file.is_file():
        return "is missing"
    if kind == "step":
        return checkpoints.json_file(file, ("global_step",))[1]
    try:
        state = load_state_file(file, map_location="cpu", mmap=kind == "optimizer")
    except Exception:  # torch's unpickler raises many types for a cut or overwritten file; all mean the same
        return "is damaged (torch cannot read it)"
    if kind == "optimizer" and not (isinstance(state, dict) and {"state", "param_groups"} <= state.keys()):
        return "holds no optimizer state"
    if kind == "scheduler" and not isinstance(state, dict):
        return "holds no scheduler state"
    if kind == "rng":
        python, numpy, cpu, gpu = (state.get(key) if isinstance(state, dict) else None for key in rng_keys)
        try:
            random.Random().setstate(python)
            np.random.RandomState().set_state(numpy)
            torch.Generator().set_state(cpu)
        except Exception:  # each generator rejects a wrong state with its own type of error
            return "holds no usable random state"
        if torch.cuda.is_available() and gpu is None:
            return "holds no random state of the GPU"
    return None


def check_training_state(
    checkpoint: Path, files: dict[str, str], accept: bool, rng_keys=RNG_KEYS["trainer"]
) -> list[str]:
    """The `files` ({name: kind of TRAINING_STATES} in `checkpoint`) a resume must leave out, because they are missing
    or damaged, once --resume_resets_state (`accept`) accepts starting those states afresh, said in one line; without
    it a PipelineError that names them and what a resume without them would start afresh. [] when all are sound."""
    problems = {name: state_problem(checkpoint / name, kind, rng_keys) for name, kind in files.items()}
    problems = {name: problem for name, problem in problems.items() if problem is not None}
    resets = list(dict.fromkeys(TRAINING_STATES[files[name]][1] for name in problems))
    what = "; ".join(f"{name} ({TRAINING_STATES[files[name]][0]}) {problem}" for name, problem in problems.items())
    it, that = ("it", "that") if len(problems) == 1 else ("them", "those")
    if problems and not accept:
        raise errors.PipelineError(
            f"{checkpoint} cannot be resumed as it was saved: {what}. Resumed without {it}, {'; and '.join(resets)}. "
            f"Resume from another checkpoint, start a new run, or add {RESETS_FLAG} to resume with {that} started "
            "afresh."
        )
    if problems:
        resumed = f"Resuming from {checkpoint} with {RESETS_FLAG}, where {what}"
        PartialState().print(f"{resumed}; so {'; and '.join(resets)}.")
    return list(problems)


def resume_view(checkpoint: Path, left_out: list[str]) -> Path:
    """A folder that is `checkpoint` without the files `left_out`: links to its other entries, in a temporary folder
    of this process removed when it ends. The libraries resume from it as from the checkpoint, and start a state
    whose file is absent afresh, where they would fail on a damaged one."""
    view = Path(tempfile.mkdtemp(prefix=f"{checkpoint.name}-resume-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for entry in checkpoint.resolve().iterdir():
        if entry.name not in left_out:
            (view / entry.name).symlink_to(entry)
    return view


def check_trainer_run(script_args, training_args, model_args, inputs: dict[str, str], script: str) -> dict:
    """What the Trainer stage `script` checks before any data or model loads, in this order: a resumed run has the
    settings its checkpoint was saved with (check_resume) and its whole training state, or --resume_resets_state
    (check_training_state; the Trainer then resumes from a view without the states it starts afresh), and the output
    folder can take the model (check_output_dir): it is none of the `inputs` ({flag: folder} of the models the run
    reads, the one it trains first: its size is the save's) nor the run's --dataset_name, holds no model of another
    kind than the one the script writes with its --use_peft, and holds no other run's periodic checkpoints
    (check_periodic_checkpoints). The run's settings, for SaveRunSettings."""
    settings = run_settings(script_args, training_args, model_args)
    check_resume(training_args.resume_from_checkpoint, settings)
    if training_args.resume_from_checkpoint is not None:
        checkpoint = Path(training_args.resume_from_checkpoint)
        files = trainer_state_files(checkpoint, training_args.world_size)
        left_out = check_training_state(checkpoint, files, script_args.resume_resets_state)
        if left_out:
            training_args.resume_from_checkpoint = str(resume_view(checkpoint, left_out))
    outputs.check_output_dir(
        training_args.output_dir,
        inputs | {"dataset_name": script_args.dataset_name},
        checkpoints.save_size(next(iter(inputs.values()))),
        script,
        model_args.use_peft,
    )
    prunes = training_args.save_strategy != "no" and bool(training_args.save_total_limit)
    outputs.check_periodic_checkpoints(training_args.output_dir, training_args.resume_from_checkpoint, prunes)
    charts.check_tensorboard_folder()
    return settings


def write_run_settings(folder: Path, settings: dict) -> None:
    outputs.write_text_atomic(folder / RUN_SETTINGS_FILE, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
