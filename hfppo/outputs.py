"""The guard on every path a script writes (output folders and files, atomic writes), and a stage's final save."""

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datasets import Dataset

from hfppo import adapters, checkpoints, errors, hints, paths

# TRL's trainers write a model card into the output folder with each periodic checkpoint: beside one, it is theirs.
TRAINER_MODEL_CARD = "README.md"
# Room a report needs on its disk, checked before the work: more than the largest (eval_ppo's metrics with every
# answer, its chart) takes.
REPORT_BYTES = 2**20
MAX_LINK_HOPS = 40  # Linux follows at most 40 links in a path (ELOOP beyond)
TEMPORARY = ".tmp"  # in the name of a file that `atomic_file` writes before renaming it into place
# Places that no script writes into, with what a write there would do: the bundled data (the sample, the lexicon, the
# style pairs) and, for an output folder, which a save replaces whole, the TensorBoard runs, this run's own included.
PROTECTED_AREAS = {
    "the pipeline's data folder": (paths.ROOT / "data", "would overwrite the data that every stage reads")
}
OUTPUT_DIR_AREAS = {
    "the TensorBoard runs' folder": (paths.TENSORBOARD_ROOT, "would delete the event files this run logs there"),
}


def check_output_dir(
    output_dir: str | Path, inputs: dict[str, str | Path], needed_bytes: int = 0, kind: str | None = None
) -> None:
    """Before anything loads, and without writing anything: refuse an output folder that is, holds or sits inside one
    of the run's `inputs` ({flag: path}), the bundled data or the TensorBoard runs, that sits inside a checkpoint, that
    is a file or a link (the save swaps folders by renaming), that holds files other than a checkpoint (a save
    replaces the whole folder) or a model of another kind than the run's `kind` (WRITES); check that it can be
    written and has room for `needed_bytes`."""
    path = Path(output_dir)
    refuse_protected(path, "--output_dir", inputs, "saving", OUTPUT_DIR_AREAS)
    refuse_unswappable(path)
    refuse_inside_checkpoint(output_dir)
    refuse_other_files(output_dir)
    refuse_other_kind(output_dir, kind)
    check_room(output_dir, needed_bytes)


def refuse_inside_checkpoint(output_dir: str | Path) -> None:
    """An --output_dir inside a checkpoint folder, which that folder's next save would delete, is refused."""
    path = Path(output_dir)
    checkpoint = checkpoint_around(path.resolve())
    if checkpoint is not None:
        raise errors.ArgumentError(
            f"--output_dir {output_dir} is inside the checkpoint {checkpoint}: the next save of that folder would "
            "delete it. Pass an --output_dir outside every checkpoint."
        )


def refuse_other_kind(output_dir: str | Path, kind: str | None) -> None:
    """An --output_dir holding a model of another kind (hints.WRITES) than the run's `kind` is refused: the save
    would replace it. The same kind is a run replacing its own earlier model."""
    path = Path(output_dir)
    held = checkpoints.model_kind(path) if kind is not None and path.is_dir() else None
    if held in hints.WRITES.values() and held != kind:
        raise errors.ArgumentError(
            f"--output_dir {output_dir} holds {held_article(held)}, and this script writes {held_article(kind)}: "
            f"saving would replace that {held} with it. Pass another --output_dir, or move {output_dir} away first."
        )


def refuse_other_files(output_dir: str | Path) -> None:
    """An --output_dir holding files that are not a checkpoint (a save replaces the whole folder) is refused: only
    periodic checkpoints, run locks and, beside those, the Trainer's model card may sit in a folder without a model."""
    path = Path(output_dir)
    if path.is_dir() and checkpoints.checkpoint_problem(path) == "no model":
        strangers = sorted(
            e.name
            for e in path.iterdir()
            if not (checkpoints.PERIODIC_CHECKPOINT.fullmatch(e.name) or e.name.endswith(checkpoints.LOCK))
        )
        if TRAINER_MODEL_CARD in strangers and any(
            checkpoints.PERIODIC_CHECKPOINT.fullmatch(e.name) for e in path.iterdir()
        ):
            strangers.remove(TRAINER_MODEL_CARD)  # from a run stopped before its final save: resuming it is fine
        if strangers:
            raise errors.ArgumentError(
                f"--output_dir {output_dir} holds files that are not a checkpoint ({', '.join(strangers[:5])}"
                f"{', ...' if len(strangers) > 5 else ''}), and a save replaces the whole folder. Pass a new or empty "
                "folder, or a checkpoint folder to overwrite."
            )


def check_room(output_dir: str | Path, needed_bytes: int) -> None:
    """The --output_dir can be written beside, and its disk has room for `needed_bytes`."""
    path = Path(output_dir)
    existing = check_writable(
        path.resolve(),
        f"cannot write beside --output_dir {output_dir}",
        "so the model could not be saved after training. Pass an --output_dir on a writable disk.",
    )
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise errors.PipelineError(
            f"--output_dir {output_dir} is on a disk with {free / 2**30:.1f} GiB free, and saving this run needs "
            f"about {needed_bytes / 2**30:.1f} GiB. Free some space or pass an --output_dir on another disk."
        )


def held_article(kind: str) -> str:
    """A kind of WRITES with its article: "an adapter", "a reward model"."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def check_output_file(path: str | Path, flag: str, inputs: dict[str, str | Path | None], what: str) -> Path:
    """The one guard of every file a script writes (metrics, charts, exports), before the work and without writing
    anything: refuse a path that is or sits inside one of the run's `inputs` ({flag: path}, None for unset) or the
    bundled data, a file among a checkpoint's own (only REPORT_FILES may sit beside a model), or a folder; check that
    its folder can be written, so that `what` is not lost after the work. Write it with `atomic_file`."""
    path = Path(path)
    if is_stream(path):  # written into where it is (see atomic_file): no folder of files to check
        return path
    if path.is_dir():
        raise errors.ArgumentError(f"{flag} {path} is a folder; it names the file to write. Pass a file path.")
    refuse_protected(path, flag, {name: value for name, value in inputs.items() if value is not None}, "writing")
    where = path.resolve()
    checkpoint = checkpoint_around(where)
    if checkpoint is not None and not (where.parent == checkpoint and where.name in paths.REPORT_FILES):
        raise errors.ArgumentError(
            f"{flag} {path} is inside the checkpoint {checkpoint}, among its model's files: writing it could replace "
            f"one of them, and the next save of that folder deletes it. Pass a path outside every checkpoint (only "
            f"{' and '.join(paths.REPORT_FILES)} may sit beside a model)."
        )
    existing = check_writable(
        where.parent,
        f"cannot write {flag} {path}",
        f"so {what} would be lost after the work. Pass a {flag} on a writable disk.",
    )
    free = shutil.disk_usage(existing).free
    if free < REPORT_BYTES:  # an empty file can still be created on a full disk: check_writable passes there
        raise errors.PipelineError(
            f"cannot write {flag} {path}: its disk has {free // 1024} KiB free, less than the {REPORT_BYTES // 1024} "
            f"KiB a report may take, so {what} would be lost after the work. Free some space or pass a {flag} on "
            "another disk."
        )
    return path


def checkpoint_around(where: Path) -> Path | None:
    """The checkpoint folder (see is_checkpoint) that the resolved path `where` sits inside, if any."""
    return next((folder for folder in where.parents if checkpoints.is_checkpoint(folder)), None)


def refuse_protected(
    path: Path, flag: str, inputs: dict[str, str | Path], verb: str, areas: dict[str, tuple] | None = None
) -> None:
    """An ArgumentError where `path` is, holds or sits inside one of the run's `inputs` ({flag: path}) or the
    places no script writes into (PROTECTED_AREAS, and `areas` of the same shape): what `verb` (saving, writing)
    there would destroy."""
    try:
        where = path.resolve()
    except (RuntimeError, OSError) as error:  # a link that leads back to itself (RuntimeError before Python 3.13)
        raise errors.ArgumentError(
            f"{flag} {path} cannot be followed to a place ({error}): a link in it leads back to itself. Pass another "
            f"{flag}."
        ) from error
    for name, value in inputs.items():
        relation = path_relation(where, Path(value).resolve())
        if relation:
            raise errors.ArgumentError(
                f"{flag} {path} {relation} --{name} {value}, which this run reads: {verb} would overwrite it. Pass "
                f"another {flag}."
            )
    for area, (folder, harm) in (PROTECTED_AREAS | (areas or {})).items():
        relation = path_relation(where, Path(folder).resolve())
        if relation:
            raise errors.ArgumentError(
                f"{flag} {path} {relation} {area} {folder}: {verb} {harm}. Pass another {flag}."
            )


def path_relation(where: Path, other: Path) -> str | None:
    """How the resolved path `where` stands to `other`: "is", "holds", "is inside", or None where apart."""
    if where == other:
        return "is"
    if where in other.parents:
        return "holds"
    if other in where.parents:
        return "is inside"
    return None


def refuse_unswappable(path: Path) -> None:
    """An output folder must be a folder, or nothing yet, and so must its save's staging names: the save renames
    <path>.partial to <path>.ready and swaps it with <path> (see staged_save), which a file there breaks after the
    training, and which would replace a link, not the folder it points to."""
    for name in (
        path,
        checkpoints.sibling(path, checkpoints.PARTIAL),
        checkpoints.sibling(path, checkpoints.READY),
        checkpoints.sibling(path, checkpoints.OLD),
    ):
        if name.is_symlink() or (name.exists() and not name.is_dir()):
            what = f"a link to {os.readlink(name)}" if name.is_symlink() else "a file"
            subject = "--output_dir" if name == path else f"--output_dir {path}'s staging name"
            raise errors.ArgumentError(
                f"{subject} {name} is {what}, not a folder: the save swaps folders by renaming them, so it would "
                f"{'replace the link, not the folder it points to' if name.is_symlink() else 'fail after training'}. "
                f"Pass a folder{' (the link target itself)' if name.is_symlink() else ''} as --output_dir, or move "
                f"{name} away."
            )


def check_writable(where: Path, cannot: str, consequence: str) -> Path:
    """The folder nearest `where` that exists (`where` itself or a parent: what a write will go into), after checking
    that a file can be created there; else a PipelineError, `cannot` (what), the reason, then `consequence`."""
    existing = next(folder for folder in (where, *where.parents) if folder.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise errors.PipelineError(
            f"{cannot} ({error.strerror}: {error.filename or existing}), {consequence}"
        ) from error
    return existing


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write, then renamed over `path` (os.replace, one atomic
    step): a reader or a kill sees the previous file or the new one whole, never half of it. A write that fails (a
    full disk) leaves the previous file as it was and raises a PipelineError. A link is followed to the file it
    names (as the guard checked it, and as a plain write would), not replaced; a device or a pipe there (/dev/null,
    /dev/stdout) is written into, never replaced by a file: the rename would destroy it (as root, /dev/null itself)."""
    path = Path(path)
    in_place = is_stream(path)
    if path.is_symlink() and not in_place:
        path = path.resolve()
    # The file's own suffix last, so that writers that infer the format from the name (savefig) still do.
    temporary = (
        path if in_place else path.with_name(f".{path.name}.{os.getpid()}-{time.time_ns()}{TEMPORARY}{path.suffix}")
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        if not in_place:
            os.replace(temporary, path)
    except OSError as error:
        kept = "the file there is unchanged" if path.exists() else "nothing was written"
        raise errors.PipelineError(
            f"could not write {path} ({error.strerror}: {error.filename or path}): {kept}. Free some space on its "
            "disk or pass a writable path, then run again."
        ) from error
    finally:
        if not in_place:
            temporary.unlink(missing_ok=True)


def is_stream(path: Path) -> bool:
    """Whether `path` names a device, a pipe or an open descriptor (/dev/null, /dev/stdout, /proc/self/fd/1), not a
    file in a folder: following its links, one into /proc's descriptors, or one to neither a file nor a folder."""
    for _ in range(MAX_LINK_HOPS):
        if path.is_relative_to("/proc"):  # /dev/stdout -> /proc/self/fd/1: the stream, even when it is a file
            return path.exists()
        if not path.is_symlink():
            break
        path = path.parent / os.readlink(path)
    return path.exists() and not path.is_file() and not path.is_dir()


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` into `path`, UTF-8, through `atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def check_periodic_checkpoints(output_dir: str | Path, resume: str | Path | None, prunes: bool) -> None:
    """Before training: refuse an output folder holding a checkpoint-<step> of another run, where this run `prunes`
    its periodic checkpoints (saves them, with a --save_total_limit). Pruning keeps the highest steps, so a
    checkpoint-15 left there would outrank this run's checkpoint-5, which would be deleted as soon as it is written.
    A run resumed from a checkpoint-<k> of this folder continues the run that wrote those up to k; any later one is
    another run's. Without pruning, this run's saves replace those of the same step and delete nothing."""
    path = Path(output_dir)
    if not prunes or not path.is_dir():
        return

    others = checkpoints.periodic_steps(path)
    resumed = Path(resume).resolve() if resume is not None else None
    if (
        resumed is not None
        and resumed.parent == path.resolve()
        and checkpoints.PERIODIC_CHECKPOINT.fullmatch(resumed.name)
    ):
        others = [
            entry for entry in others if checkpoints.checkpoint_step(entry) > checkpoints.checkpoint_step(resumed)
        ]
    if others:
        names = ", ".join(entry.name for entry in others[:5]) + (", ..." if len(others) > 5 else "")
        raise errors.ArgumentError(
            f"--output_dir {output_dir} holds {names}, saved by another run: this run's own periodic checkpoints "
            "would rank below them and be deleted by --save_total_limit as soon as they are saved. Resume that run "
            f"(--resume_from_checkpoint {others[-1]}), move them away, or pass another --output_dir."
        )


def save_held_out(rows: Dataset, system_prompt: str, folder: Path) -> None:
    """A stage's held-out rows beside its model, each with the system prompt it was trained with, so the stage's
    eval script sees exactly that split."""
    rows = rows.map(lambda row: {"system": row["system"] or system_prompt})
    rows.to_json(folder / paths.HELD_OUT_FILE, force_ascii=False)


def save_train_results(folder: Path, runtime_s: float, samples_per_second: float) -> None:
    """The run's wall time and examples per second, as the Trainer's train_results.json names them."""
    results = {"train_runtime": runtime_s, "train_samples_per_second": samples_per_second}
    write_text_atomic(Path(folder) / paths.TRAIN_RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def save_trainer_stage(
    trainer, held_out: Dataset | None, system_prompt: str, metrics: dict, per_second: float | None = None
) -> None:
    """A Trainer stage's final save into its output_dir, whole or not at all (staged_save): the model or adapter and
    its tokenizer, the held-out rows (if any) and train_results.json (the run's `metrics`' train_runtime, and
    `per_second` examples a second, by default the Trainer's train_samples_per_second); then the TensorBoard writer is
    closed, so that the stage's chart sees every point."""
    with checkpoints.staged_save(trainer.args.output_dir) as staging:
        trainer.save_model(staging)
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(staging)
            adapters.record_base(staging)  # an adapter's base, as train_ppo.py records it
            if held_out is not None and len(held_out):
                save_held_out(held_out, system_prompt, staging)
            if per_second is None:
                per_second = metrics["train_samples_per_second"]
            save_train_results(staging, metrics["train_runtime"], per_second)
    trainer.end()
