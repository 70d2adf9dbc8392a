"""The questions a person asks eval_sft.py and eval_ppo.py: --question flags, a terminal prompt, or stdin lines."""

import sys
from collections.abc import Iterator

from hfppo import errors

NOT_UTF8 = "stdin must be UTF-8 text"  # said by both ways of reading it


def read_questions(cli_questions: list[str]) -> Iterator[str]:
    """--question flags if given, else a prompt loop on a terminal, else one question per stdin line.

    Each question is shown after the prompt `输入问题:`, typed there on a terminal, echoed otherwise.
    """
    if not cli_questions and sys.stdin.isatty():
        while True:
            try:
                question = input("输入问题:")
            except (EOFError, KeyboardInterrupt):
                print()
                return
            except UnicodeDecodeError:  # typed on a terminal in another encoding: it can be typed again
                print(f"That line is not UTF-8 ({NOT_UTF8}); type it again.", file=sys.stderr)
                continue
            if question.strip():
                yield question
    else:
        for question in cli_questions or (line.strip() for line in stdin_lines() if line.strip()):
            print(f"输入问题:{question}")
            yield question


def stdin_lines() -> Iterator[str]:
    """stdin's lines, decoded as UTF-8 whatever the locale says. A line that is not UTF-8 stops the questions with
    its line number and byte offset: skipping it would answer a list the user did not give, and a file in another
    encoding (GBK, say) would have every Chinese line skipped."""
    offset = 0
    for number, line in enumerate(sys.stdin.buffer, 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise errors.PipelineError(
                f"stdin line {number} is not UTF-8 (byte {offset + error.start} of stdin, {error.reason}); the "
                f"questions before it were answered. {NOT_UTF8}: convert the file first, e.g. iconv -f GBK -t "
                "UTF-8 questions.txt > questions-utf8.txt."
            ) from error
        offset += len(line)
