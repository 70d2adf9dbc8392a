"""Preference rows read from a .jsonl/.json/.csv/.parquet file or a folder of them, each row validated."""

import codecs
import csv
import io
import json
import re
import unicodedata
from collections.abc import Collection, Iterator
from pathlib import Path

from datasets import Dataset

from hfppo import errors

REQUIRED_COLUMNS = ("question", "chosen", "rejected")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
JSON_WHITESPACE = " \t\r"  # with "\n", the only whitespace JSON allows between values (RFC 8259)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str only where an escape held half a pair (_validate)
# A file or folder of a folder's files whose name holds "train" or "training" as a word (bounded by the start or
# end, "/", "-", "_", ".", a space or a digit): the train split by the hub's naming convention (datasets'
# data_files.SPLIT_KEYWORDS and NON_WORDS_CHARS), so train.jsonl and data/train-00000-of-00001.parquet are, and
# constrained_style.jsonl is not.
TRAIN_SPLIT_NAME = re.compile(r"(?:^|[-._ 0-9/])(?:train|training)(?=[-._ 0-9/]|$)", re.IGNORECASE)
FILES_NAMED = 10  # the files a folder's one line names before "and N more": a snapshot may hold hundreds of shards
# Characters that show nothing on their own besides whitespace: Unicode's format characters (category Cf: zero-width
# space and joiners, the byte-order mark, soft hyphen, bidi marks), controls (Cc), and the blank letters a
# whitespace check misses (Hangul fillers, the blank Braille pattern).
BLANK_LETTERS = "\u115f\u1160\u3164\uffa0\u2800"
# The chat-template control tokens of the ChatML family every tokenizer here uses (<|im_start|>, <|im_end|>,
# <|endoftext|>; Llama 3's <|eot_id|>, Phi's <|end|>; DeepSeek's full-width ｜ variant): typed into text, the
# tokenizer turns them into the real special token, so a row could forge a turn. A tokenizer at hand adds its own
# special tokens (control_tokens).
CONTROL_TOKEN = re.compile(r"<[|｜][^\s<>|｜]{1,64}[|｜]>")
CONTROL_TOKEN_REMEDY = "Remove it from that row, or remove the row."  # what a refused row's message ends with
SAME_PAIR_ROWS_NAMED = 10  # the rows a message names when many pairs repeat one answer, before "and N more"


def numbered(rows) -> Iterator[tuple[str, dict]]:
    return ((f"row {i}", row) for i, row in enumerate(rows, start=1))


def is_hidden(path: Path) -> bool:
    """Whether a path inside a dataset folder is hidden: it or a folder on its way starts with a dot (Jupyter's
    .ipynb_checkpoints/ copies, .git/, macOS's ._ files, the hub clients' .cache/)."""
    return any(part.startswith(".") for part in path.parts)


def is_data_file(path: Path) -> bool:
    """Whether `path` names a data file by its suffix, in any case (prefs.JSONL is a JSON Lines file)."""
    return path.suffix.lower() in DATA_SUFFIXES


def folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the files a dataset folder's rows are read from, its other visible data files), each sorted.

    Hidden files and folders are never read. Where some files are named as the train split (TRAIN_SPLIT_NAME, a
    downloaded snapshot's train-*.parquet beside its test-*.parquet), those are read and the others left out;
    otherwise every visible data file is read. A split is never guessed from a part of a word.
    """
    files = sorted(
        p for p in folder.rglob("*") if is_data_file(p) and not is_hidden(p.relative_to(folder)) and p.is_file()
    )
    if not files:
        raise errors.PipelineError(
            f"dataset folder {folder} holds no {'/'.join(DATA_SUFFIXES)} file outside hidden folders."
        )
    train = [p for p in files if TRAIN_SPLIT_NAME.search(p.relative_to(folder).as_posix())]
    return (train, sorted(set(files) - set(train))) if train else (files, [])


def folder_summary(folder: Path, taken: list[Path], left_out: list[Path]) -> str:
    """One line naming the files a folder's rows are read from, and those it leaves out, so the user sees both."""

    def names(files: list[Path]) -> str:
        shown = [p.relative_to(folder).as_posix() for p in files[:FILES_NAMED]]
        more = len(files) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more else "")

    split = ", the train split by their names" if left_out else ""
    line = f"Reading {len(taken)} file{'s' * (len(taken) != 1)} of dataset folder {folder}{split}: {names(taken)}"
    return line + (f" (left out: {names(left_out)})." if left_out else ".")


def read_folder(folder: Path) -> Iterator[tuple[str, dict]]:
    """Rows of the data files of a folder (a downloaded dataset snapshot) that `folder_files` takes, after one line
    saying which."""
    taken, left_out = folder_files(folder)
    print(folder_summary(folder, taken, left_out))
    for file in taken:
        for where, row in read_file(file):
            yield f"{file}: {where}", row


def read_file(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (position, row) pairs; the position ("line 7", "row 7") is what error messages cite.

    Each format goes through its own parser, so text comes back byte for byte: newlines (\n, \r\n) inside quoted
    CSV fields and every character JSON leaves raw in a string (U+2028, U+2029, U+0085, ...) survive.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            dataset = Dataset.from_parquet(str(path))
        except Exception as error:  # pyarrow's errors vary by corruption; all mean "not a readable parquet file"
            raise errors.PipelineError(f"{path} is not a readable parquet file ({error}).") from error
        yield from numbered(dataset)
        return
    text = _read_utf8(path)
    if suffix == ".csv":
        yield from _read_csv(text, path)
    elif suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise errors.PipelineError(
                f"{path} is not valid JSON: {errors.json_problem(error)} at line {error.lineno}, column {error.colno}."
            ) from error
        yield from numbered(rows)
    else:  # JSON Lines, under .jsonl or .json
        # Lines end at "\n" only: str.splitlines() would also split at U+2028, U+0085, \x0c and more, which
        # json.dumps(ensure_ascii=False) leaves raw inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip(JSON_WHITESPACE):
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise errors.PipelineError(
                    f"{path}: line {number} is not valid JSON ({errors.json_problem(error)} at column {error.colno}). "
                    'Each line must be one JSON object like {"question": "...", "chosen": "...", "rejected": "..."}.'
                ) from error


def _read_utf8(path: Path) -> str:
    """The file's text, UTF-8 with or without a byte-order mark; any other encoding gets a message on converting it."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = data.count(b"\n", 0, offset) + 1
        raise errors.PipelineError(
            f"{path} is not UTF-8 text: line {line} (byte {offset}) holds the byte 0x{data[offset]:02x}, which UTF-8 "
            f"does not allow there. Convert the file to UTF-8 first, e.g. from GBK: "
            f"iconv -f GBK -t UTF-8 {path} > {path.with_stem(path.stem + '.utf8')}"
        ) from error


def _read_csv(text: str, path: Path) -> Iterator[tuple[str, dict]]:
    """CSV rows as dicts under the header's names, each cited by the line it starts on.

    The csv module reads the text as a file opened with newline="" (the io.StringIO below), the one way it keeps
    quoted newlines, \r\n included, exactly (Python docs, csv.reader).
    """
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a field can be as long as the file, not 128 KiB
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        start = reader.line_num + 1
        for values in reader:
            if values:  # a blank line, as csv.DictReader skips
                if len(values) != len(header):
                    raise errors.PipelineError(
                        f"{path}: line {start} has {len(values)} fields but the header has {len(header)} "
                        f"({', '.join(header)}). Quote fields that contain commas or newlines."
                    )
                yield f"line {start}", dict(zip(header, values))
            start = reader.line_num + 1
    except csv.Error as error:
        raise errors.PipelineError(f"{path}: line {reader.line_num} is not valid CSV ({error}).") from error


def validate(rows, source) -> Dataset:
    """The (position, row) pairs as a Dataset of question/chosen/rejected/system text, or one message that names the
    first bad row, its column and what to do; pairs whose answers are the same are named together at the end. Those
    are refused however few: each is a mistake in the data that the user can fix, as an empty column is, and a share
    allowed would train on the ones below it without a word.

    A `system` that shows nothing (spaces, zero-width characters) is taken as none: the run's --system_prompt
    applies to that row, as for an empty CSV cell, since that is what a user who left it blank expects.
    """
    records, same_answers = [], []
    for where, row in rows:
        if not isinstance(row, dict):
            raise errors.PipelineError(
                f"{source}: {where} is a {type(row).__name__}, not an object with named columns."
            )
        for column in REQUIRED_COLUMNS:
            problem = None
            if column not in row:
                problem = f"has no column {column!r} (it has: {', '.join(map(str, row)) or 'nothing'})"
            elif not isinstance(row[column], str):
                problem = f"column {column!r} is a {type(row[column]).__name__}, not a string ({row[column]!r})"
            elif not row[column].strip():
                problem = f"column {column!r} is empty"
            elif not shows_text(row[column]):
                problem = f"column {column!r} shows nothing: it holds only {character_names(row[column])}"
            if problem:
                raise errors.PipelineError(
                    f"{source}: {where} {problem}. Every row needs non-empty text in {', '.join(REQUIRED_COLUMNS)} "
                    "(system is optional). Fix or remove that row."
                )
        system = row.get("system") or ""
        if not isinstance(system, str):
            raise errors.PipelineError(
                f"{source}: {where} column 'system' is a {type(system).__name__}, not a string."
            )
        record = {column: row[column] for column in REQUIRED_COLUMNS}
        record["system"] = system if shows_text(system) else ""
        for column, text in record.items():
            _refuse_lone_surrogate(text, source, where, column)
            _refuse_control_token(text, source, where, column)
        if normalised(record["chosen"]) == normalised(record["rejected"]):
            same_answers.append(where)
        records.append(record)
    if not records:
        raise errors.PipelineError(f"{source} holds no rows.")
    if same_answers:
        named = ", ".join(same_answers[:SAME_PAIR_ROWS_NAMED])
        more = len(same_answers) - SAME_PAIR_ROWS_NAMED
        raise errors.PipelineError(
            f"{source}: {len(same_answers)} of {len(records)} rows have the same answer as chosen and as rejected "
            f"(compared after Unicode NFKC normalisation, whitespace and invisible characters left out): {named}"
            f"{f' and {more} more' if more > 0 else ''}. Such a pair prefers an answer to itself, so the reward model "
            "and DPO learn nothing from it. Fix or remove those rows."
        )
    return Dataset.from_list(records)


def is_blank(char: str) -> bool:
    """Whether `char` shows nothing on its own: whitespace, a format or control character, a blank letter."""
    return char.isspace() or unicodedata.category(char) in ("Cf", "Cc") or char in BLANK_LETTERS


def shows_text(text: str) -> bool:
    """Whether `text` holds a character that shows: not only spaces and zero-width characters."""
    return not all(map(is_blank, text))


def character_names(text: str) -> str:
    """The distinct characters of `text` by code point and name (U+200B ZERO WIDTH SPACE), for a message about
    characters a reader cannot see."""
    chars = dict.fromkeys(text)
    return ", ".join(f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}" for char in chars)


def normalised(text: str) -> str:
    """`text` as two spellings of one question or answer compare: Unicode NFKC (full-width letters, digits and
    punctuation as their ASCII forms, ligatures split), with whitespace and characters that show nothing left out,
    so "吃了没？" and " 吃了 没?\u200b" are the same."""
    text = "".join(unicodedata.normalize("NFKC", text).split())
    if text.isprintable() and not any(letter in text for letter in BLANK_LETTERS):  # the usual case, at C speed
        return text
    return "".join(char for char in text if not is_blank(char))


def control_tokens(tokenizer) -> frozenset[str]:
    """The tokenizer's control strings: its special tokens (eos, pad, ...) and every added token it marks special
    (Qwen's <|im_start|>, which all_special_tokens leaves out). Typed into text, each becomes that token."""
    added = (token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    return frozenset(tokenizer.all_special_tokens).union(added) - {""}


def control_token_problem(text: str, tokens: Collection[str] = ()) -> str | None:
    """What is wrong with `text` if it holds a chat-template control token, one of `tokens` (control_tokens of a
    tokenizer) or of the ChatML form (CONTROL_TOKEN), said for a message after the text's name; None if it holds none.
    The one check of a row's text, a typed question and a system prompt."""
    found = [(match.start(), match.group()) for match in [CONTROL_TOKEN.search(text)] if match]
    found += [(text.index(token), token) for token in tokens if token in text]
    if not found:
        return None
    token = min(found)[1]
    return (
        f"holds {token!r}, a chat-template control token: the tokenizer would turn it into the real token, so the "
        "text could end its turn and forge another (a system turn, say)"
    )


def _refuse_control_token(text: str, source, where: str, column: str) -> None:
    """A ChatML control token typed into a row's text: refused at load time, where the row's line is known."""
    if problem := control_token_problem(text):
        raise errors.PipelineError(f"{source}: {where} column {column!r} {problem}. {CONTROL_TOKEN_REMEDY}")


def _refuse_lone_surrogate(text: str, source, where: str, column: str) -> None:
    """JSON's \\ud800 to \\udfff escapes are halves of a UTF-16 pair: alone, they parse into a string that is no
    text, and no tokenizer (nor the datasets library) can encode it."""
    if match := LONE_SURROGATE.search(text):
        raise errors.PipelineError(
            f"{source}: {where} column {column!r} holds the escape \\u{ord(match.group()):04x} at character "
            f"{match.start() + 1}, half of a UTF-16 surrogate pair without its other half: no character, so no "
            "tokenizer can encode it. Write the character itself, or both halves of its pair (\\ud83d\\ude00 is 😀), "
            "or remove that row."
        )
