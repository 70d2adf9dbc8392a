"""What a checkpoint folder holds, saves that a kill cannot break, locks, roles, and reading one."""

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from hfppo import errors, paths

# A checkpoint is complete when its marker (config.json; adapter_config.json for a LoRA adapter) sits beside these.
CHECKPOINT_MARKERS = ("config.json", "adapter_config.json")
CHECKPOINT_FILES = {"weights": ("*.safetensors", "pytorch_model*.bin"), "tokenizer": ("tokenizer_config.json",)}
# A save writes .<folder>.hfppo-partial beside <folder>, renames it .<folder>.hfppo-ready once every file is written
# (one atomic step), then swaps: <folder> -> .<folder>.hfppo-old, the ready one -> <folder>, and deletes the old one.
# Killed at any instant, it leaves one complete checkpoint, <folder> or the ready one, and the next load or save
# finishes the swap (`settle_checkpoint`). Hidden names no user would choose, on the same disk as <folder> (so that the
# renames are atomic); and each such folder holds STAGING_MARKER, which names the folder it stages: recovery moves or
# deletes only folders that carry it, never a user's folder of a similar name. .<folder>.lock, beside it, is held by
# the run that writes the folder.
PARTIAL, READY, OLD, LOCK = ".hfppo-partial", ".hfppo-ready", ".hfppo-old", ".lock"
STAGING = (PARTIAL, READY, OLD)
STAGING_MARKER = ".hfppo-staging"
# The Trainer writes its periodic checkpoint-<step> in place, not staged: training.MarkPeriodicSaves puts this marker
# in the folder before the Trainer writes there, and SaveRunSettings removes it after the run's settings, the last file
# (RUN_SETTINGS_FILE; resuming.py reads it). A folder that still holds it without that file is a save a kill cut short.
SAVING_MARKER = ".hfppo-saving"
RUN_SETTINGS_FILE = "run_settings.json"
PERIODIC_CHECKPOINT = re.compile(r"checkpoint-\d+")  # the Trainer's and train_ppo.py's; kept across a final save
# The JSON files of a checkpoint that loading it reads (transformers, peft, tokenizers, compare.py), each a
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
# The class each kind of model loads as, by its architecture's suffix (as ROLES), built to check its weights' names.
LOADERS = {"ForSequenceClassification": AutoModelForSequenceClassification, "ForCausalLM": AutoModelForCausalLM}
# Weights a checkpoint may lack beside what its config's model has, legitimately: the score head of a reward model or
# critic made from a language model, which starts random (check_role refuses a reward model without it); and weights
# it may hold that its model does not use: a language model's head in a reward model or critic made from one.
OPTIONAL_WEIGHTS = ("score.",)
UNUSED_WEIGHTS = {"ForSequenceClassification": ("lm_head.",), "ForCausalLM": ()}
NAMED_WEIGHTS = 3  # how many of the weights that do not fit a message names
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's (SAFETENSORS_WEIGHTS_NAME): a LoRA adapter's weights


def sibling(path: Path, suffix: str) -> Path:
    """The pipeline's own name beside `path` for `suffix` (a staging folder of STAGING, the LOCK file): hidden."""
    return path.with_name(f".{path.name}{suffix}")


def mark_staging(folder: Path, path: Path) -> None:
    """Mark `folder` as the pipeline's staging folder of a save into `path` (see is_staging)."""
    (folder / STAGING_MARKER).write_text(path.name)


def is_staging(folder: Path, path: Path) -> bool:
    """Whether `folder` is a staging folder that a save into `path` made: a folder (not a link) that holds its
    marker, naming `path`. Nothing else is ever moved or deleted by recovery."""
    try:
        return not folder.is_symlink() and (folder / STAGING_MARKER).read_text() == path.name
    except (OSError, UnicodeDecodeError):
        return False


def is_clearable(folder: Path, path: Path) -> bool:
    """Whether the save into `path` may delete `folder`: its own staging folder, or an empty folder (what deleting a
    staging folder leaves when killed after its marker went; deleting it loses nothing)."""
    if is_staging(folder, path):
        return True
    try:
        return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())
    except OSError:
        return False


def clear_staging(folder: Path, marker: str = STAGING_MARKER) -> None:
    """Delete a folder the pipeline marked (a staging folder; a periodic save cut short), its `marker` last, so that
    a kill part-way leaves it marked (or empty) and the next load or save deletes the rest."""
    for entry in folder.iterdir():
        if entry.name == marker:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / marker).unlink(missing_ok=True)
    folder.rmdir()


def mark_saving(folder: Path) -> None:
    """Mark the periodic checkpoint `folder` as being written in place (SAVING_MARKER), creating it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAVING_MARKER).write_text(folder.name)


def saving_cut_short(folder: Path) -> bool:
    """Whether `folder` is a periodic checkpoint whose in-place save a kill cut short: it holds SAVING_MARKER, naming
    it, and not the run's settings, the save's last file."""
    try:
        marked = (folder / SAVING_MARKER).read_text() == folder.name
    except (OSError, UnicodeDecodeError):
        return False
    return marked and not (folder / RUN_SETTINGS_FILE).is_file()


def foreign_staging(path: Path) -> list[Path]:
    """The staging names beside `path` (STAGING) that hold something the pipeline did not write there: a file, a
    link, a folder without its marker. A save into `path` would need those names, so it refuses to start."""
    return [
        name
        for name in (sibling(path, suffix) for suffix in STAGING)
        if (name.exists() or name.is_symlink()) and not is_clearable(name, path)
    ]


def in_the_way(path: Path, names: list[Path]) -> str:
    """Why a save into `path` cannot use its staging `names` (foreign_staging), and what to do."""
    listed = " and ".join(str(name) for name in names)
    return (
        f"{listed} is in the way: the save into {path} uses that staging name for its own folder, and something this "
        "pipeline did not write is there (a file, a link, or a folder without the save's marker). Move it away, "
        "then run again."
    )


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
    """Finish a save that was killed before it swapped its complete new checkpoint (its ready folder) into place, and
    clear what a finished swap left (the old folder, the marker inside <path>). Only the save's own marked folders
    are moved or deleted (is_staging); each step repeats safely, so a kill here is settled next time."""
    ready, old = sibling(path, READY), sibling(path, OLD)
    if is_staging(ready, path):
        # Periodic checkpoints (training states to resume from) belong to the run, not to one saved model.
        if path.is_dir():
            for entry in path.iterdir():
                if PERIODIC_CHECKPOINT.fullmatch(entry.name) and not (ready / entry.name).exists():
                    os.rename(entry, ready / entry.name)
            if old.exists() or old.is_symlink():
                if not is_clearable(old, path):
                    raise errors.PipelineError(in_the_way(path, [old]))
                clear_staging(old)
            mark_staging(path, path)  # before the rename: the old folder is never unmarked
            os.rename(path, old)
        os.rename(ready, path)
    elif not path.exists() and is_staging(old, path):
        os.rename(old, path)
    if is_clearable(old, path):
        clear_staging(old)
    if (path / STAGING_MARKER).is_file():  # a folder renamed into place keeps none
        (path / STAGING_MARKER).unlink()


@contextmanager
def staged_save(path: str | Path) -> Iterator[Path]:
    """Save a checkpoint into its partial folder (marked, and present when the block starts), then swap it in (see
    `settle_checkpoint`).

    The folder is whole or absent at every instant: the partial folder is never read; once written it becomes the
    ready folder in one rename, which is complete by construction; the swap renames folders only. So a kill at any
    point leaves the previous checkpoint or the new one complete, and the next load or save settles which. A staging
    name that holds something the pipeline did not write stops the save before it writes (foreign_staging).
    Under several processes every one enters the block (DeepSpeed and FSDP gather weights there, and each process
    saves its own random state); the main process clears the staging folder before and swaps it in after.
    """
    path = Path(path)
    staging = sibling(path, PARTIAL)
    state = PartialState()
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        settle_saves(path)  # its periodic checkpoints' too, which the swap carries into the new folder
        settle_checkpoint(path)  # and an empty old folder, what a kill leaves of one deleted
        foreign = foreign_staging(path)
        if foreign:
            raise errors.PipelineError(in_the_way(path, foreign))
        if staging.exists():
            clear_staging(staging)  # a save killed while writing: never complete
        staging.mkdir()
        mark_staging(staging, path)
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


def interrupted(path: Path) -> bool:
    """Whether a save into `path` was cut short before it finished its swap: its marked ready or old folder is left,
    or the marker inside `path`."""
    return any(is_staging(sibling(path, suffix), path) for suffix in (READY, OLD)) or (path / STAGING_MARKER).is_file()


def writer_locks(path: Path) -> list[Path]:
    """The folders whose lock a run writing `path` holds: `path`, and for a periodic checkpoint its run's folder."""
    return [path, path.parent] if PERIODIC_CHECKPOINT.fullmatch(path.name) else [path]


def finish_interrupted_save(path: Path) -> None:
    """Complete the swap of a save that was cut short at `path` (`interrupted`), unless a run is saving there now (it
    holds the folder's lock, or for a periodic checkpoint its run folder's)."""
    if not interrupted(path):
        return
    locks = [try_lock(folder) for folder in writer_locks(path)]
    try:
        if all(lock is not None for lock in locks):  # no run is saving here now
            settle_checkpoint(path)
    finally:
        for lock in filter(None, locks):
            lock.close()


def interrupted_saves(folder: Path) -> list[Path]:
    """What saves into `folder` and into its periodic checkpoints left when killed, to settle: `folder` itself where
    `interrupted`, each checkpoint-<step> that is, and the marked partial folders of periodic checkpoints."""
    found = [folder] if interrupted(folder) else []
    if folder.is_dir() and not folder.is_symlink():
        for entry in folder.iterdir():
            for suffix in STAGING:
                name = entry.name.removeprefix(".").removesuffix(suffix)
                if (
                    entry.name == f".{name}{suffix}"
                    and PERIODIC_CHECKPOINT.fullmatch(name)
                    and is_staging(entry, folder / name)
                ):
                    found.append(folder / name)
        found += [
            entry
            for entry in periodic_steps(folder)
            if (entry / STAGING_MARKER).is_file() or (entry / SAVING_MARKER).is_file()
        ]
    return list(dict.fromkeys(found))


def settle_saves(folder: Path) -> None:
    """Settle every save that `interrupted_saves` finds in `folder`: a complete periodic checkpoint left half-swapped
    is put in place, a periodic one killed while writing (never complete: a marked partial folder, or a Trainer's
    checkpoint-<step> that `saving_cut_short`) is deleted. The caller holds the folder's lock, or no run writes it."""
    for path in interrupted_saves(folder):
        if saving_cut_short(path):  # the Trainer's, written in place
            clear_staging(path, SAVING_MARKER)
            continue
        if (path / SAVING_MARKER).is_file():  # complete: stopped before its marker went
            (path / SAVING_MARKER).unlink()
        settle_checkpoint(path)
        if path != folder and is_staging(sibling(path, PARTIAL), path):
            clear_staging(sibling(path, PARTIAL))


def finish_interrupted_saves(folder: Path) -> None:
    """`settle_saves` on `folder`, unless a run holds its lock (it is saving there now). Touches nothing where no save
    was interrupted. Under several processes the main one settles, and the others wait for it (so that none checks
    the folder half-settled)."""
    state = PartialState()
    if state.is_main_process and interrupted_saves(folder):
        lock = try_lock(folder)
        if lock is not None:
            try:
                settle_saves(folder)
            finally:
                lock.close()
    state.wait_for_everyone()


def require_checkpoint(path: str | Path, command: str, role: str | None = None) -> Path:
    """`path` if it holds a complete checkpoint fit for `role` (see ROLES; None: any model or adapter), after
    finishing a save that was cut short there (`finish_interrupted_save`: it renames folders); else a PipelineError
    that names the folder, the problem and the `command` that writes the right thing."""
    path = Path(path)
    finish_interrupted_save(path)
    problem = checkpoint_problem(path)
    if problem == "no model":
        partial = sibling(path, PARTIAL)
        left = f" ({partial} is left from a save that was killed while writing, and is incomplete)"
        raise errors.PipelineError(
            f"no model at {path}{left if is_staging(partial, path) else ''}. Make it first: {command}"
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
    check_architecture(path, command)
    if (path / ADAPTER_WEIGHTS).is_file():  # small: read whole here, where a model's are checked once loaded
        with safe_open(path / ADAPTER_WEIGHTS, "pt") as handle:
            check_finite(path, ((name, handle.get_tensor(name)) for name in handle.keys()), command)
    return path


def check_finite(path: str | Path, weights: Iterable[tuple[str, torch.Tensor]], command: str) -> None:
    """Refuse the checkpoint at `path` if one of its `weights` ((name, tensor) pairs: a loaded model's
    named_parameters(), or an adapter's file) holds a NaN or an infinity: sampling from it fails deep in torch
    ("probability tensor contains either inf, nan"), and scoring or training with it gives NaN, later."""
    name = next((name for name, tensor in weights if tensor.is_floating_point() and not tensor.isfinite().all()), None)
    if name is not None:
        raise errors.PipelineError(
            f"the checkpoint at {path} holds weights that are not numbers (NaN or infinity), the first in {name}: "
            "the run that wrote it diverged, or the file was damaged since. Nothing can sample or score with it. "
            f"Write it again: {command}"
        )


def check_architecture(path: Path, command: str) -> None:
    """Refuse a model whose weights are not those of the model its config.json describes: transformers would build
    that model and leave the weights it lacks random and drop the others (a Qwen2 checkpoint under a Llama config
    loses its q/k/v biases), with a warning at most."""
    problem = architecture_problem(path)
    if problem is not None:
        raise errors.PipelineError(
            f"the checkpoint at {path} does not match its config.json: {problem}. Loaded so, its weights would be "
            "dropped or left random without an error: that config.json is not the one saved with these weights. "
            f"Put back the config.json saved with them, or write the model again: {command}"
        )


def architecture_problem(path: Path) -> str | None:
    """What the safetensors weights at `path` lack or hold beside the weights of the model that its config.json makes
    (built on the meta device: no memory, no weights read), or None. The model is the one this pipeline's loaders
    build: AutoModelForSequenceClassification for a *ForSequenceClassification architecture, else
    AutoModelForCausalLM. Not checked (None): an adapter, weights in .bin files, a config transformers cannot build
    (loading it says why, see `loading`), and the model families whose weights transformers renames or merges while
    loading (their names on disk differ from the model's by design)."""
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        return None
    try:
        config = AutoConfig.from_pretrained(path)
        if get_checkpoint_conversion_mapping(config.model_type) is not None:
            return None
        architectures = config.architectures or []
        head = next((kind for kind in LOADERS if any(name.endswith(kind) for name in architectures)), "ForCausalLM")
        with torch.device("meta"):
            model = LOADERS[head].from_config(config)
    except Exception:  # transformers raises many types for a config it cannot build; loading it says why
        return None
    expected, found = set(model.state_dict()), weight_names(path)
    prefixed = {f"{model.base_model_prefix}.{name}" for name in found}
    if not found & expected and prefixed & expected:  # saved from the bare base model, which loads so too
        found = prefixed
    tied = set(getattr(model, "all_tied_weights_keys", {}))
    missing = [
        name
        for name in expected - found - tied
        if not name.startswith(OPTIONAL_WEIGHTS) and not matches(name, model._keys_to_ignore_on_load_missing)
    ]
    unexpected = [
        name
        for name in found - expected
        if not name.startswith(UNUSED_WEIGHTS[head]) and not matches(name, model._keys_to_ignore_on_load_unexpected)
    ]
    parts = [
        f"{what} {len(names)} {why} ({named(names)})"
        for what, names, why in (("lack", missing, "that model needs"), ("hold", unexpected, "it has no place for"))
        if names
    ]
    made = f"that makes a {type(model).__name__} (model_type {config.model_type})"
    return f"{made}, and the weights {' and '.join(parts)}" if parts else None


def matches(name: str, patterns) -> bool:
    """Whether the weight `name` matches one of a model class's regular expressions of weights to ignore at load."""
    return any(re.search(pattern, name) for pattern in patterns or ())


def named(names: list[str]) -> str:
    """The first NAMED_WEIGHTS of `names` in order, and how many more."""
    shown = sorted(names)[:NAMED_WEIGHTS]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


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
    lock_file = sibling(path, LOCK)
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
            lock = sibling(path, LOCK).open("a+")
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


def weight_shapes(path: str | Path) -> dict[str, list[int]]:
    """{tensor name: shape} of a checkpoint's safetensors files, read from their headers (no weights are loaded)."""
    shapes = {}
    for file in Path(path).glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            shapes |= {name: handle.get_slice(name).get_shape() for name in handle.keys()}
    return shapes


def other_files_size(path: str | Path) -> int:
    """The bytes of the files in a model folder besides its weights: its config and tokenizer, which a save copies."""
    weights = {f for pattern in CHECKPOINT_FILES["weights"] for f in Path(path).glob(pattern)}
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file() and f not in weights)


def save_size(model_path: str | Path) -> int:
    """About the bytes a save of this model takes: twice its weight files on disk, since a bf16 checkpoint trained
    in fp32 (as on a CPU) saves in fp32. 0 for a model not downloaded or built yet."""
    path = Path(model_path)
    return 2 * sum(f.stat().st_size for pattern in CHECKPOINT_FILES["weights"] for f in path.glob(pattern))
