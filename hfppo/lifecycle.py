"""This process's run: the lock on its output folder, and how it ends (one-paragraph errors, Ctrl-C)."""

import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import PartialState
from tqdm import tqdm
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hfppo import checkpoints, errors, hints, resuming

_HELD_LOCKS = {}  # this process's output-folder locks, by folder, open until it ends
# Ctrl-C: the status a shell gives a process that SIGINT ended (128 + the signal's number), and what user_errors then
# reports on: the output folder this process locked (lock_output_dir), when, and whether it existed then.
INTERRUPTED_STATUS = 128 + signal.SIGINT
_RUN = {}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PipelineError into a one-paragraph message: exit status 2 for a bad argument, 1 for anything else; and
    Ctrl-C into one line on what the run kept (`interrupted_run`), exit status 130."""
    try:
        yield
    except errors.PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, errors.ArgumentError) else 1)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches every process of an `accelerate launch`, and the launcher sends its workers
        # another: that one must not break into the line, and the first process speaks for them all.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for bar in list(tqdm._instances):  # bars left open would be drawn again at exit, below the line
                bar.close()
            if int(os.environ.get("RANK", "0")) == 0:  # on a line of its own, after the terminal's ^C
                print(f"\nInterrupted: {interrupted_run()}", file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        sys.exit(INTERRUPTED_STATUS)


def lock_output_dir(output_dir: str | Path) -> None:
    """Hold the output folder for the rest of this run (main process), so that a second run on it stops at once,
    told which process holds it, before it trains."""
    path = Path(output_dir)
    if not PartialState().is_main_process or path.resolve() in _HELD_LOCKS:
        return
    lock = checkpoints.try_lock(path)
    if lock is None:
        owner = checkpoints.sibling(path, checkpoints.LOCK).read_text().strip() or "another process"
        raise errors.PipelineError(
            f"--output_dir {output_dir} is in use by another run ({owner}). Wait for it to finish, or pass another "
            "--output_dir."
        )
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}: {shlex.join([hints.python_command(), *sys.argv])}")
    lock.flush()
    _HELD_LOCKS[path.resolve()] = lock  # held until the process ends
    _RUN.update(output_dir=path, start=time.time(), existed=path.exists())


def interrupted_run() -> str:
    """What a run stopped by Ctrl-C kept, in words: the model it saved (the stop came after its final save), else the
    newest periodic checkpoint it saved and the command that resumes from it, else nothing. Only what this run wrote
    counts: a checkpoint's run settings, the last file a periodic save writes, or the model's marker, dated after the
    run locked its output folder (lock_output_dir; an evaluation, or a run stopped before that, saved nothing)."""
    if not _RUN:
        return "nothing was saved."
    output, start = _RUN["output_dir"], _RUN["start"]
    try:
        # A save stopped during its swap, final or periodic: its complete checkpoint is then in place.
        checkpoints.settle_saves(output)
    except (OSError, errors.PipelineError):
        pass  # what is left is settled by the next load or save, as after a kill

    def this_run(file: Path) -> bool:
        return file.is_file() and file.stat().st_mtime >= start

    if any(this_run(output / marker) for marker in checkpoints.CHECKPOINT_MARKERS):
        return f"this run's model was saved to {output} before the interruption."
    periodic = [
        folder
        for folder in output.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if checkpoints.PERIODIC_CHECKPOINT.fullmatch(folder.name) and this_run(folder / resuming.RUN_SETTINGS_FILE)
    ]
    if periodic:
        last = max(periodic, key=lambda folder: int(folder.name.rpartition("-")[2]))
        return f"the last periodic checkpoint, {last}, resumes it: {resume_command(last)}"
    as_it_was = f"; {output} is as it was" if _RUN["existed"] else ""
    return f"nothing of this run was saved{as_it_was}."


def resume_command(checkpoint: Path) -> str:
    """This run's command line with --resume_from_checkpoint `checkpoint` (in place of one it had)."""
    args, skip = [], False
    for word in sys.argv[1:]:
        if skip or word.startswith("--resume_from_checkpoint="):
            skip = False
        elif word == "--resume_from_checkpoint":
            skip = True
        else:
            args.append(word)
    args += ["--resume_from_checkpoint", str(checkpoint)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the launcher's own flags are not this process's to know
        return f"the same accelerate launch command with {shlex.join(args[-2:])}"
    return shlex.join([hints.python_command(), sys.argv[0], *args])
