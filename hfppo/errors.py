"""The errors a user can fix, and the wording they share."""

import json


class PipelineError(Exception):
    """A problem the user can fix (bad data, missing checkpoint, wrong flag): shown as one message, no traceback."""


class ArgumentError(PipelineError):
    """A bad flag or --config file: exit status 2, as argparse's own usage errors."""


def join_names(names: list[str]) -> str:
    """Names listed as a sentence lists them: "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


# A value a message quotes is cut to this many characters, on one line: a --config value can be megabytes long.
MAX_SHOWN = 80


def shown(value) -> str:
    """`value` as a message quotes it: its repr (one line: repr escapes newlines), cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 5]}[...]"


# A library's message is cut to this many characters: it may quote a value of any length, from a flag or a file.
MAX_LIBRARY_MESSAGE = 400


def one_line(text: str) -> str:
    """A library's message on one line (each run of whitespace one space), cut to MAX_LIBRARY_MESSAGE characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_LIBRARY_MESSAGE else f"{text[: MAX_LIBRARY_MESSAGE - 5]}[...]"


def json_problem(error: json.JSONDecodeError) -> str:
    """The problem without its trailing "at" ("Unterminated string starting at"), which expects the position after
    it: the callers add " at column 9" themselves."""
    return error.msg.removesuffix(" at")
