"""The commands that hints print, quoted for a shell and carrying the user's own flags."""

import itertools
import shlex
import sys
from pathlib import Path

from hfppo import checkpoints, paths

# The kind of model (see model_kind) each script writes with its default flags, for the hints that print it and, in
# the mode chosen (`writes`), the output guard (outputs.refuse_other_kind).
WRITES = {
    "train_sft.py": "language model",
    "train_rm.py": "reward model",
    "train_ppo.py": "adapter",
    "train_dpo.py": "adapter",
    "train_grpo.py": "adapter",
    "export.py": "language model",  # an adapter merged into its base
}
# What a script that writes an adapter by default writes with --use_peft false: the whole policy (train_dpo.py).
WHOLE_POLICY = "language model"


def writes(script: str, use_peft: bool | None = None) -> str:
    """The kind of model `script` writes in the mode chosen: WRITES[script], or the whole policy where `use_peft` is
    False for a script that writes an adapter by default. None: the script has no --use_peft."""
    kind = WRITES[script]
    return WHOLE_POLICY if kind == "adapter" and use_peft is False else kind


def python_command() -> str:
    """`python`, or the interpreter running this script where it lives under the working folder (make's .venv), so
    that a printed command works as printed without activating the environment."""
    interpreter = Path(sys.executable).absolute()
    return str(interpreter.relative_to(Path.cwd())) if interpreter.is_relative_to(Path.cwd()) else "python"


def command(script: str, tiny: bool, **flags) -> str:
    """The command line a user runs to make or use a checkpoint: `python script [--tiny] [--flag value ...]`, quoted
    for a shell. Hints carry the user's own flags, so they work as printed; a flag set to True is written alone, one
    set to None is left out."""
    words = [python_command(), script] + (["--tiny"] if tiny else [])
    for flag, value in flags.items():
        if value is True:
            words.append(f"--{flag}")
        elif value is not None:
            words += [f"--{flag}", str(value)]
    return shlex.join(words)


def base_model_remedy(path: str | Path, flag: str) -> str:
    """What makes a base model folder whole again: a download or tiny build is redone by deleting it and running the
    same command again; a folder of the user's own is theirs to replace."""
    if paths.BASE_DIR.resolve() in Path(path).resolve().parents:
        return f"rm -r {shlex.quote(str(path))} && {shlex.join([python_command(), *sys.argv])}"
    return f"pass a complete model folder as --{flag}"


def unless_default(path: str | Path, default: str | Path) -> str | None:
    """`path`, or None where it is the default folder, so that hints stay as short as the README's."""
    return None if Path(path) == Path(default) else str(path)


def policy_command(name: str, path: str | Path, tiny: bool) -> str:
    """The command that writes the policy `name` (of POLICIES) into `path` (see `hint_output_dir`)."""
    default, script, flags = paths.POLICIES[name]
    return command(script, tiny, **flags, output_dir=hint_output_dir(path, default, WRITES[script]))


def reward_model_command(path: str | Path, tiny: bool) -> str:
    """The command that writes the reward model into `path` (see `hint_output_dir`)."""
    return command("train_rm.py", tiny, output_dir=hint_output_dir(path, paths.RM_DIR, WRITES["train_rm.py"]))


def hint_output_dir(path: str | Path, default: str | Path, kind: str) -> str | None:
    """The --output_dir a hint names for a command that writes a model of `kind` (WRITES) meant for `path`: `path`
    (None where it is the default), unless it holds a model of another kind, which the command run as printed would
    replace; then the default folder, or the first free <default>_<n>. A hint shown because `path` holds the wrong
    model must never suggest overwriting it."""
    for candidate in itertools.chain((path, default), (f"{default}_{n}" for n in itertools.count(2))):
        if checkpoints.model_kind(candidate) in (None, kind):
            return unless_default(candidate, default)
