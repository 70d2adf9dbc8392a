"""What a checkpoint folder holds, saves that a kill cannot break, locks, roles, and reading one."""

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer

from hfppo import errors, paths

# A checkpoint is complete when its marker (config.json; adapter_config.json for a LoRA adapter) sits beside these.
CHECKPOINT_MARKERS = ("config.json", "adapter_config.json")
CHECKPOINT_FILES = {"weights": ("*.safetensors", "pytorch_model*.bin"), "tokenizer": ("tokenizer_config.json",)}
# A save writes <folder>.partial, renames it <folder>.ready once every file is written (one atomic step), then swaps:
# <folder> -> <folder>.old, <folder>.ready -> <folder>, and deletes <folder>.old. Killed at any instant, it leaves one
# complete checkpoint, <folder> or <folder>.ready, and the next load or save finishes the swap (`settle_checkpoint`).
# .<folder>.lock, beside it, is held by the run that writes the folder.
PARTIAL, READY, OLD, LOCK = ".partial", ".ready", ".old", ".lock"
PERIODIC_CHECKPOINT = re.compile(r"checkpoint-\d+")  # the Trainer's and train_ppo.py's; kept across a final save
# The JSON files of a checkpoint that loading it reads (transformers, peft, tokenizers, eval_ppo.py --compare), each a
# mapping, with the keys this pipeline reads from it: require_checkpoint reads every one present before any library
# does, so that a truncated or emptied one is named with the command that writes it again, not met as a library's
# traceback (or, for generation_config.json, silently replaced by defaults), nor after an evaluation has run.
CHECKPOINT_JSON = {
    "config.json": (),
    "adapter_config.json": (),  # base_model_name_or_path, read where an adapter is loaded (adapter_base)
    "generation_config.json": (),
    "tokenizer.json": (),
    "tokenizer_config.json": (),
    "special_tokens_map.json": (),
    "added_tokens.json": (),
    "vocab.json": (),
    "model.safetensors.index.json": (),
    paths.TRAIN_RESULTS_FILE: ("train_runtime", "train_samples_per_second"),
    paths.ADAPTER_BASE_FILE: ("base_model_path", "fingerprint"),  # an adapter's base (adapters.check_base)
}
# What a model folder must be for each role it plays, by its config's architecture (and, for a reward model, a trained
# score head in its weights: a language model loaded as a reward model gets a random head, silently).
ROLES = {
    "language model": ("ForCausalLM",),
    "reward model": ("ForSequenceClassification",),
    "critic": ("ForCausalLM", "ForSequenceClassification"),
    "adapter": (),  # a LoRA adapter: adapter_config.json, no config.json
}
SCORE_HEAD = "score.weight"


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete, readable checkpoint, or None: a marker beside weights (and a tokenizer for a
    model), every safetensors file as long as its header says."""
    markers = [marker for marker in CHECKPOINT_MARKERS if (path / marker).is_file()]
    if not markers:
        return "no model"
    missing = [what for what, patterns in CHECKPOINT_FILES.items() if not any(any(path.glob(p)) for p in patterns)]
    if missing:
        return f"a {markers[0]} but no {' and no '.join(missing)} file"
    for file in path.glob("*.safetensors"):
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"a damaged {file.name} ({error})"
    return None


def read_checkpoint_json(path: str | Path, remedy: str, keys: tuple[str, ...] = ()) -> dict:
    """The mapping a checkpoint's JSON file holds, with each of `keys`; else a PipelineError that names the file and
    what is wrong with it, and ends with `remedy` (what to do: "Write it again: <the command that writes it>")."""
    value, problem = json_file(Path(path), keys)
    if problem is not None:
        raise errors.PipelineError(
            f"the checkpoint file {path} {problem}: it was not written completely, or was damaged since. {remedy}"
        )
    return value


def json_file(path: Path, keys: tuple[str, ...] = ()) -> tuple[dict | None, str | None]:
    """(the mapping the JSON file `path` holds, None), or (None, what is wrong with it: "is empty", ...)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, "is missing"
    except OSError as error:
        return None, f"cannot be read ({error.strerror})"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as error:
        if not error.doc.strip():
            return None, "is empty"
        return None, f"is not valid JSON ({errors.json_problem(error)} at line {error.lineno}, column {error.colno})"
    if not isinstance(value, dict):
        return None, f"holds a JSON {type(value).__name__}, not a mapping of names to values"
    lacking = [repr(key) for key in keys if key not in value]
    return (None, f"has no {errors.join_names(lacking)}") if lacking else (value, None)


# Errors while loading a checkpoint that are not the checkpoint's: the machine ran out of memory.
NOT_THE_CHECKPOINT = (MemoryError, torch.OutOfMemoryError)


@contextmanager
def loading(path: str | Path, command: str) -> Iterator[None]:
    """Turn a library's error while loading the checkpoint at `path` into a PipelineError with the `command` that
    writes it again.

    Every file is there and parses (require_checkpoint checked that), so what fails now are files that do not make a
    model or tokenizer: a config value of the wrong type (ValueError, TypeError, huggingface_hub's strict dataclass
    errors), a config whose sizes are not the weights' (RuntimeError), a tokenizer.json without its vocabulary
    (KeyError, or the tokenizers library's bare Exception), weights cut short where no header says so (OSError,
    SafetensorError). Hence any Exception but running out of memory; the message keeps the library's own words."""
    try:
        yield
    except NOT_THE_CHECKPOINT:
        raise
    except Exception as error:
        raise errors.PipelineError(
            f"the checkpoint at {path} could not be loaded ({type(error).__name__}: {' '.join(str(error).split())}). "
            f"It may be damaged or half-copied. Write it again: {command}"
        ) from error


def load_tokenizer(path: str | Path, command: str, **kwargs):
    """The tokenizer of the checkpoint at `path` (AutoTokenizer), its errors said with the `command` that writes it."""
    with loading(path, command):
        return AutoTokenizer.from_pretrained(path, **kwargs)


def weight_names(path: Path) -> set[str]:
    """The tensor names of a checkpoint's safetensors files, read from their headers (no weights are loaded)."""
    names = set()
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            names |= set(handle.keys())
    return names


def settle_checkpoint(path: Path) -> None:
    """Finish a save that was killed before it swapped its complete new checkpoint (<path>.ready) into place, and
    clear what a finished swap left (<path>.old). Each step repeats safely, so a kill here is settled next time."""
    ready, old = sibling(path, READY), sibling(path, OLD)
    if ready.is_dir():
        # Periodic checkpoints (training states to resume from) belong to the run, not to one saved model.
        if path.is_dir():
            for entry in path.iterdir():
                if PERIODIC_CHECKPOINT.fullmatch(entry.name) and not (ready / entry.name).exists():
                    os.rename(entry, ready / entry.name)
            if old.exists():
                shutil.rmtree(old)
            os.rename(path, old)
        os.rename(ready, path)
    elif not path.exists() and old.is_dir():
        os.rename(old, path)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged_save(path: str | Path) -> Iterator[Path]:
    """Save a checkpoint into <path>.partial, then swap it in (see `settle_checkpoint`).

    The folder is whole or absent at every instant: <path>.partial is never read; once written it becomes
    <path>.ready in one rename, which is complete by construction; the swap renames folders only. So a kill at any
    point leaves the previous checkpoint or the new one complete, and the next load or save settles which.
    Under several processes every one enters the block (DeepSpeed and FSDP gather weights there, and each process
    saves its own random state); the main process clears the staging folder before and swaps it in after.
    """
    path = Path(path)
    staging = sibling(path, PARTIAL)
    state = PartialState()
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        settle_checkpoint(path)
        if staging.exists():
            shutil.rmtree(staging)  # a save killed while writing: never complete
    state.wait_for_everyone()
    try:
        yield staging
    except (OSError, SafetensorError) as error:  # a full disk, most often: the staging folder is never read
        if state.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise errors.PipelineError(save_failure(path, staging, error)) from error
    state.wait_for_everyone()
    if state.is_main_process:
        os.rename(staging, sibling(path, READY))
        settle_checkpoint(path)


def save_failure(path: Path, staging: Path, error: Exception) -> str:
    """What a save into `path` that failed while writing `staging` (removed) left, and what to do."""
    reason = f"{error.strerror}: {error.filename or staging}" if isinstance(error, OSError) else str(error)
    kept = (
        f"the previous checkpoint in {path} is intact"
        if checkpoint_problem(path) is None
        else f"nothing was saved to {path}"
    )
    periodic = periodic_steps(path.parent if PERIODIC_CHECKPOINT.fullmatch(path.name) else path)
    resume = f", or resume from {periodic[-1]} (--resume_from_checkpoint)" if periodic else ""
    return (
        f"saving to {path} failed ({reason}): {kept}, and the incomplete save {staging} was removed. Free some space "
        f"on that disk (the save needs about the model's size) or pass an --output_dir on another disk, then run "
        f"again{resume}."
    )


def periodic_steps(folder: Path) -> list[Path]:
    """The checkpoint-<step> folders in `folder`, lowest step first."""
    found = [entry for entry in folder.glob("checkpoint-*") if PERIODIC_CHECKPOINT.fullmatch(entry.name)]
    return sorted((entry for entry in found if entry.is_dir()), key=checkpoint_step)


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint-<step> folder."""
    return int(folder.name.split("-")[1])


def finish_interrupted_save(path: Path) -> None:
    """Complete the swap of a save that was cut short at `path` (its <folder>.ready or <folder>.old is left), unless a
    run is saving there now (it holds the folder's lock)."""
    if sibling(path, READY).exists() or sibling(path, OLD).exists():
        lock = try_lock(path)
        if lock is not None:  # no run is saving here now
            settle_checkpoint(path)
            lock.close()


def require_checkpoint(path: str | Path, command: str, role: str | None = None) -> Path:
    """`path` if it holds a complete checkpoint fit for `role` (see ROLES; None: any model or adapter), after
    finishing a save that was cut short there (`finish_interrupted_save`: it renames folders); else a PipelineError
    that names the folder, the problem and the `command` that writes the right thing."""
    path = Path(path)
    finish_interrupted_save(path)
    problem = checkpoint_problem(path)
    if problem == "no model":
        partial = sibling(path, PARTIAL)
        interrupted = f" ({partial} is left from a save that was killed while writing, and is incomplete)"
        raise errors.PipelineError(
            f"no model at {path}{interrupted if partial.exists() else ''}. Make it first: {command}"
        )
    if problem:
        raise errors.PipelineError(
            f"the checkpoint at {path} has {problem}: it was not written completely, or was damaged since. Write it "
            f"again: {command}"
        )
    for name, keys in CHECKPOINT_JSON.items():
        if (path / name).is_file():
            read_checkpoint_json(path / name, f"Write it again: {command}", keys)
    if role is not None:
        check_role(path, role, command)
    return path


def check_role(path: Path, role: str, command: str) -> None:
    """A model folder must be what its role needs: a language model for a policy, a reward model with a trained
    score head for scoring (a language model loaded as one would score with a random head, silently), a LoRA adapter
    for PPO's output."""
    is_adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    if is_adapter != (role == "adapter"):
        what = "a LoRA adapter (train_ppo.py's output), not a whole model" if is_adapter else "a whole model"
        raise errors.PipelineError(
            f"{path} is {what}, so it cannot be the {role}. Pass a {role} folder, such as the one this writes: "
            f"{command}"
        )
    if is_adapter:
        return
    architectures = read_checkpoint_json(path / "config.json", f"Write it again: {command}").get("architectures") or []
    if not any(name.endswith(suffix) for name in architectures for suffix in ROLES[role]):
        kind = " / ".join(architectures) or "no architecture"
        raise errors.PipelineError(
            f"{path} is a {kind} model, not a {role} (*{' or *'.join(ROLES[role])}). Pass a {role} folder, such as "
            f"the one this writes: {command}"
        )
    if role == "reward model" and SCORE_HEAD not in weight_names(path):
        raise errors.PipelineError(
            f"{path} has no trained score head ({SCORE_HEAD} is not in its weights): loaded as a reward model it "
            f"would score with random weights. Train one: {command}"
        )


def model_kind(path: str | Path) -> str | None:
    """What the folder `path` holds, by its files alone: "adapter", "reward model" or "language model" (see ROLES),
    "a model" of another architecture or an unreadable config, or None where it holds no model."""
    path = Path(path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return "adapter"
    if not (path / "config.json").is_file():
        return None
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):  # unreadable, or JSON but not an object
        return "a model"
    for role in ("reward model", "language model"):
        if any(name.endswith(ROLES[role]) for name in architectures):
            return role
    return "a model"


def try_lock(path: Path):
    """An exclusive lock on the output folder `path` (a file beside it, since the folder itself is swapped), or None
    if another process holds it. The operating system releases it when the process ends, however it ends."""
    lock_file = sibling(path.parent / f".{path.name}", LOCK)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_file.open("a+")
    except OSError:
        return None  # a folder we cannot write to: nothing to settle or lock here
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def waiting_lock(path: Path, waiting: str) -> Iterator[None]:
    """Hold `path`'s lock (try_lock's) for the block; while another process holds it, say `waiting` and wait. Where
    no lock file can be written, the block runs unlocked and its own write says why it fails."""
    lock = try_lock(path)
    if lock is None:
        try:
            lock = sibling(path.parent / f".{path.name}", LOCK).open("a+")
        except OSError:
            lock = None
        else:
            print(waiting, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a model or adapter: its marker beside weights or a tokenizer (complete or not)."""
    return any((folder / marker).is_file() for marker in CHECKPOINT_MARKERS) and any(
        any(folder.glob(pattern)) for patterns in CHECKPOINT_FILES.values() for pattern in patterns
    )


def save_size(model_path: str | Path) -> int:
    """About the bytes a save of this model takes: twice its weight files on disk, since a bf16 checkpoint trained
    in fp32 (as on a CPU) saves in fp32. 0 for a model not downloaded or built yet."""
    path = Path(model_path)
    return 2 * sum(f.stat().st_size for pattern in CHECKPOINT_FILES["weights"] for f in path.glob(pattern))
