"""Every flag a message names exists in a script that prints it, read from the source (no model, no run).

The rule, per `--flag` in a string literal of a script or of a module it uses (docstrings, which no user sees as a
message, left out):
- in the command after a script's name (`train_rm.py --eos_token x`: no `: `, `; `, `, ` or `. ` between them), the
  flag is that script's; after "accelerate launch", accelerate launch's;
- else, in a script's own file, the flag is that script's;
- else (a module's literal), the flag is of the scripts that can print it: each script whose code reaches the function,
  class or constant that holds the literal (the reference graph of top-level names, followed from the script's own
  code through `module.name` and same-module names). At least one of them must have it: the graph cannot tell which
  branch runs in which script (a resume message is reached by every script, printed by the training ones only), so
  it demands the flag of the scripts together, and fails for a flag none of them has (a typo, a removed flag, a flag
  of a script that never prints the message).
Parsers are each script's make_parser(), with cli's own --config.
"""

import ast
import importlib
import re
from functools import cache
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser

from hfppo import paths

SCRIPTS = ["train_sft", "train_rm", "train_ppo", "train_dpo", "train_grpo"]
SCRIPTS += ["chat_web", "eval_sft", "eval_rm", "eval_ppo", "compare", "export"]
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
NAMED_SCRIPT = re.compile(r"\b(\w+)\.py\b|accelerate launch")
SENTENCE_BREAK = re.compile(r"[:;,.](\s|$)")  # ends the command a script's name starts
ACCELERATE = "accelerate launch"
MODULE_CODE = "<module>"  # a module's top-level statements that are not definitions: run on import


def module_file(name: str) -> Path | None:
    """The project file of module `name` (common, hfppo.x, or a script), None for a library's."""
    path = paths.ROOT / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


@cache
def module_names(path: Path) -> dict[str, Path]:
    """The project modules file `path` imports, by the name it refers to them with (`from hfppo import cli`: cli)."""
    names = {}
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if module_file(alias.name):
                    names[alias.asname or alias.name] = module_file(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                found = module_file(f"{node.module}.{alias.name}")
                if found:
                    names[alias.asname or alias.name] = found
    return names


@cache
def top_level(path: Path) -> dict[str, list[ast.AST]]:
    """File `path`'s top-level names (functions, classes, assigned constants) with the statements that define them;
    every other top-level statement under MODULE_CODE."""
    names = {MODULE_CODE: []}
    for statement in parsed(path).body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.setdefault(statement.name, []).append(statement)
        elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names.setdefault(name.id, []).append(statement)
        else:
            names[MODULE_CODE].append(statement)
    return names


def references(path: Path, name: str) -> set[tuple[Path, str]]:
    """The top-level names that top-level name `name` of `path` refers to: its own module's, and other project
    modules' as module.name."""
    found = set()
    modules = module_names(path)
    for statement in top_level(path)[name]:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and node.id in top_level(path) and node.id != name:
                found.add((path, node.id))
            elif isinstance(node, ast.Name) and node.id in modules:  # a module used as a whole: its code runs
                found.add((modules[node.id], MODULE_CODE))
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                module = modules[node.value.id]
                if node.attr in top_level(module):
                    found.add((module, node.attr))
    return found


@cache
def reach(script: str) -> frozenset[tuple[Path, str]]:
    """Every (file, top-level name) script `script` can run: its whole file, and what that refers to, transitively."""
    path = paths.ROOT / f"{script}.py"
    todo = [(path, name) for name in top_level(path)]
    seen = set()
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += references(*node)
    return frozenset(seen)


def docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def literals(statement: ast.AST, skip: set[int]):
    """The string literals in `statement`: constants, and f-strings with their fields as {} (so that a flag after a
    field, `f"{script} --tiny"`, is still seen; a field is never a script's name)."""
    inside = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.JoinedStr):
            inside |= {id(value) for value in node.values}
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    for node in ast.walk(statement):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside | skip:
            yield node.lineno, node.value


@cache
def flags(script: str) -> frozenset[str]:
    if script == ACCELERATE:
        return frozenset(launch_command_parser()._option_string_actions)
    parser = importlib.import_module(script).make_parser()
    return frozenset(parser._option_string_actions) | {"--config"}  # --config: cli.parse_args reads it itself


def command_of(before: str) -> str | None:
    """The script (or ACCELERATE) whose command a flag is part of, from the literal's text `before` it: the last
    script named, if no sentence break follows its name; None for none."""
    named = list(NAMED_SCRIPT.finditer(before))
    if not named or SENTENCE_BREAK.search(before[named[-1].end() :]):
        return None
    name = named[-1].group(1) or ACCELERATE
    return name if name in [*SCRIPTS, ACCELERATE] else None


def mentions() -> list[tuple[str, str, frozenset[str]]]:
    """Every `--flag` mention: (where, flag, the scripts whose parser must have it)."""
    printers = {}  # (file, top-level name) -> the scripts that reach it
    for script in SCRIPTS:
        for node in reach(script):
            printers.setdefault(node, set()).add(script)
    found = []
    for (path, name), scripts in sorted(printers.items()):
        skip = docstrings(parsed(path))
        for statement in top_level(path)[name]:
            for line, text in literals(statement, skip):
                for match in FLAG.finditer(text):
                    owner = command_of(text[: match.start()])
                    owners = {owner} if owner else {path.stem} if path.stem in SCRIPTS else scripts
                    where = f"{path.relative_to(paths.ROOT)}:{line}"
                    found.append((where, match.group(), frozenset(owners)))
    return sorted(set(found))


def test_every_flag_a_message_names_exists_in_a_script_that_prints_it():
    wrong = [
        f"{where}: {flag} is a flag of none of {', '.join(sorted(owners))}"
        for where, flag, owners in mentions()
        if not any(flag in flags(owner) for owner in owners)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "text, owner",
    [
        ("run train_rm.py --eos_token x", "train_rm"),  # in a script's command: that script's
        ("train_rm.py's --max_length", "train_rm"),
        ("python train_ppo.py --tiny --output_dir checkpoint/x --from_base", "train_ppo"),
        ("accelerate launch --num_processes 2 train_ppo.py", ACCELERATE),
        ("held out for eval_ppo.py --compare: --eval_fraction", None),  # after the command: the printer's
        ("set --max_new_tokens", None),
        ("see notes.py --x", None),  # a file that is not a script
    ],
)
def test_a_mention_belongs_to_the_command_it_is_in(text, owner):
    """The rule's attribution, on literals of its own (the suite's check above depends on it)."""
    match = list(FLAG.finditer(text))[-1]
    assert command_of(text[: match.start()]) == owner


def test_the_walk_finds_a_shared_modules_messages_in_the_scripts_that_reach_them():
    """The reference graph is followed: cli's messages are printed by every script, the output folder's by the scripts
    that write one; an own file's flags are checked against that script alone; and a flag is missing where it is (so
    the check can fail)."""
    found = {(where.split(":")[0], flag): owners for where, flag, owners in mentions()}
    assert found[("hfppo/cli.py", "--config")] == set(SCRIPTS)
    assert "train_ppo" in found[("hfppo/outputs.py", "--output_dir")]
    assert "eval_sft" not in found[("hfppo/outputs.py", "--output_dir")]  # eval_sft writes no folder
    assert found[("eval_ppo.py", "--compare")] == {"eval_ppo"}
    assert "--output_dir" not in flags("eval_sft") and "--kl_coef" not in flags("train_sft")
