"""The guard on every path a script writes (output folders and files, atomic writes), and a stage's final save."""

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from hfppo import adapters, checkpoints, errors, hints, paths

# TRL's trainers write a model card into the output folder with each periodic checkpoint: beside one, it is theirs.
TRAINER_MODEL_CARD = "README.md"
# Room a report needs on its disk, checked before the work: more than the largest (compare.py's metrics with every
# answer, its chart) takes.
REPORT_BYTES = 2**20
MAX_LINK_HOPS = 40  # Linux follows at most 40 links in a path (ELOOP beyond)
TEMPORARY = ".tmp"  # in the name of a file that `atomic_file` writes before renaming it into place
# The project's own files, every one tracked under paths.ROOT, as glob patterns there, with what a write there would
# destroy: no script writes into them, whatever the working folder. Left out: the working folders checkpoint/ and
# tensorboard/ (outputs go there when the project is the working folder), new files and folders beside these (such
# as docs/export.md's `--output_dir qwen-rude`), and benchmarks/results/, where benchmarks/gpu.sh writes.
OWN_FILES = "would land on or among the project's own files, which no script writes"
PROJECT_FILES = {
    "the pipeline's data folder": (("data",), "would overwrite the data that every stage reads"),
    "the project's code": (("*.py", "hfppo", "tests", ".ci", "benchmarks/*.py", "benchmarks/*.sh"), OWN_FILES),
    "the project's documentation": (("*.md", "LICENSE", "docs", "imgs", "benchmarks/*.md"), OWN_FILES),
    "the project's configuration": (
        ("configs", "Makefile", "pyproject.toml", "requirements*.txt", ".gitignore"),
        OWN_FILES,
    ),
}


@dataclass(frozen=True)
class Area:
    """A place that a script's write must stay out of: what it is and where (a relative path is under the working
    folder, as the scripts' defaults are), what a write there would destroy, and the one script (`writer`) whose own
    output folder it is, if any."""

    what: str
    path: Path
    harm: str
    writer: str | None = None


# The models the stages read, at their default folders, each saved by its own script alone: an --output_dir of any
# other script there would replace a model that other stages, the comparison, the export or the page read. The base
# models (the tiny base, the downloads, the critic's start) no --output_dir writes.
POLICY_HARM = "would replace the policy that compare.py, export.py and the page read"
MODEL_AREAS = [
    Area(
        "the base models' folder",
        paths.BASE_DIR,
        "would replace a model that the stages and the critic start from (the tiny base, the downloads)",
    ),
    Area(
        "the SFT model's folder",
        paths.SFT_DIR,
        "would replace the model that PPO, DPO and GRPO start from and their adapters apply to",
        "train_sft.py",
    ),
    Area(
        "the reward model's folder",
        paths.RM_DIR,
        "would replace the reward model that PPO and GRPO score with",
        "train_rm.py",
    ),
] + [
    Area(f"{method.label}'s folder", method.folder, POLICY_HARM, method.script)
    for method in paths.METHODS.values()
    if method.script and method.folder != paths.SFT_DIR
]
# Where an output folder, which a save replaces whole, must not be: the pipeline's models, and the TensorBoard runs
# (this run's own included).
OUTPUT_DIR_AREAS = MODEL_AREAS + [
    Area("the TensorBoard runs' folder", paths.TENSORBOARD_ROOT, "would delete the event files this run logs there")
]


def project_areas() -> list[Area]:
    """The project's files that exist (PROJECT_FILES), each an Area that no script writes into."""
    return [
        Area(what, match, harm)
        for what, (patterns, harm) in PROJECT_FILES.items()
        for pattern in patterns
        for match in sorted(paths.ROOT.glob(pattern))
    ]


def check_output_dir(
    output_dir: str | Path,
    inputs: dict[str, str | Path | None],
    needed_bytes: int = 0,
    script: str | None = None,
    use_peft: bool | None = None,
) -> None:
    """Before anything loads: refuse an output folder that is, holds or sits inside one of the run's `inputs` ({flag:
    path}, its models and data), the project's files, a model folder of the pipeline other than the running `script`'s
    own (MODEL_AREAS) or the TensorBoard runs, that sits inside a checkpoint, that is a file or a link (the save swaps
    folders by renaming), that holds files other than a checkpoint (a save replaces the whole folder) or a model of
    another kind than `script` writes with its `use_peft` (hints.writes); check that it can be written and has room
    for `needed_bytes`. No `script`: every model folder is refused. The one change it makes: saves into the folder
    that a kill cut short are settled first (checkpoints.finish_interrupted_saves), as every load and save does, so
    that a run resumed after a kill during a periodic save finds its checkpoints in place."""
    path = Path(output_dir)
    areas = [area for area in OUTPUT_DIR_AREAS if script is None or area.writer != script]
    refuse_protected(path, "--output_dir", inputs, "saving", areas)
    refuse_unswappable(path)
    refuse_inside_checkpoint(output_dir)
    checkpoints.finish_interrupted_saves(path)
    refuse_other_files(output_dir)
    refuse_other_kind(output_dir, hints.writes(script, use_peft) if script else None)
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
    periodic checkpoints, their saves' marked staging folders (a run saving there now holds them), run locks and,
    beside those, the Trainer's model card may sit in a folder without a model."""
    path = Path(output_dir)
    if path.is_dir() and checkpoints.checkpoint_problem(path) == "no model":
        strangers = sorted(
            e.name
            for e in path.iterdir()
            if not (
                checkpoints.PERIODIC_CHECKPOINT.fullmatch(e.name)
                or e.name.endswith(checkpoints.LOCK)
                or (e.name.startswith(".") and e.is_dir() and (e / checkpoints.STAGING_MARKER).is_file())
            )
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
    project's files (its data, code, documentation and configuration), a file among a checkpoint's own (only
    REPORT_FILES may sit beside a model), or a folder; check that its folder can be written, so that `what` is not lost
    after the work. Write it with `atomic_file`."""
    path = Path(path)
    if is_stream(path):  # written into where it is (see atomic_file): no folder of files to check
        return path
    if path.is_dir():
        raise errors.ArgumentError(f"{flag} {path} is a folder; it names the file to write. Pass a file path.")
    refuse_protected(path, flag, inputs, "writing")
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
    path: Path, flag: str, inputs: dict[str, str | Path | None], verb: str, areas: Sequence[Area] = ()
) -> None:
    """An ArgumentError where `path` is, holds or sits inside one of the run's `inputs` ({flag: path}, None for
    unset), the project's files (project_areas) or the `areas`: what `verb` (saving, writing) there would destroy."""
    try:
        where = path.resolve()
    except (RuntimeError, OSError) as error:  # a link that leads back to itself (RuntimeError before Python 3.13)
        raise errors.ArgumentError(
            f"{flag} {path} cannot be followed to a place ({error}): a link in it leads back to itself. Pass another "
            f"{flag}."
        ) from error
    for name, value in inputs.items():
        relation = path_relation(where, Path(value).resolve()) if value is not None else None
        if relation:
            raise errors.ArgumentError(
                f"{flag} {path} {relation} --{name} {value}, which this run reads: {verb} would overwrite it. Pass "
                f"another {flag}."
            )
    for area in project_areas() + list(areas):
        relation = path_relation(where, area.path.resolve())
        if relation:
            only = f"; only {area.writer} saves there" if area.writer else ""
            raise errors.ArgumentError(
                f"{flag} {path} {relation} {area.what} {area.path}: {verb} {area.harm}{only}. Pass another {flag}."
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
    """An output folder must be a folder, or nothing yet, and its save's staging names (checkpoints.STAGING, beside
    it) free or the pipeline's own: the save stages its files there and swaps them with <path> by renaming folders
    (see staged_save), which a link would replace, not the folder it points to, and which a file, or a user's folder,
    under a staging name would break after the training."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = f"a link to {os.readlink(path)}" if path.is_symlink() else "a file"
        raise errors.ArgumentError(
            f"--output_dir {path} is {what}, not a folder: the save swaps folders by renaming them, so it would "
            f"{'replace the link, not the folder it points to' if path.is_symlink() else 'fail after training'}. "
            f"Pass a folder{' (the link target itself)' if path.is_symlink() else ''} as --output_dir, or move "
            f"{path} away."
        )
    foreign = checkpoints.foreign_staging(path)
    if foreign:
        raise errors.ArgumentError(
            f"--output_dir {path}: {checkpoints.in_the_way(path, foreign)} Or pass another --output_dir."
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
    if others and finished_run(path, others[-1]):
        raise errors.ArgumentError(
            f"--output_dir {output_dir} holds a finished run: its model, saved after its last periodic checkpoint "
            f"{others[-1].name}. Training into it again would rank this run's periodic checkpoints below that one "
            "and delete them (--save_total_limit), and resuming from it would redo that run's last updates. Pass "
            f"another --output_dir, or move {output_dir} away first."
        )
    if others:
        names = ", ".join(entry.name for entry in others[:5]) + (", ..." if len(others) > 5 else "")
        raise errors.ArgumentError(
            f"--output_dir {output_dir} holds {names}, saved by another run: this run's own periodic checkpoints "
            "would rank below them and be deleted by --save_total_limit as soon as they are saved. Resume that run "
            f"(--resume_from_checkpoint {others[-1]}), move them away, or pass another --output_dir."
        )


def finished_run(folder: Path, last_periodic: Path) -> bool:
    """Whether `folder` holds a run that finished: a complete model whose marker was written after `last_periodic`
    (its run's settings, the last file of a periodic save), as a run's final save follows its periodic ones. A model
    older than the checkpoints is an earlier run's, which a later run stopped before its end."""
    if checkpoints.checkpoint_problem(folder) is not None:
        return False
    saved = max((folder / m).stat().st_mtime for m in checkpoints.CHECKPOINT_MARKERS if (folder / m).is_file())
    settings = last_periodic / checkpoints.RUN_SETTINGS_FILE
    return saved >= (settings if settings.is_file() else last_periodic).stat().st_mtime


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
