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


def json_problem(error: json.JSONDecodeError) -> str:
    """The problem without its trailing "at" ("Unterminated string starting at"), which expects the position after
    it: the callers add " at column 9" themselves."""
    return error.msg.removesuffix(" at")
