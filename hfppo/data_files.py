"""Preference rows read from a .jsonl/.json/.csv/.parquet file or a folder of them, each row validated."""

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset

from hfppo import errors

REQUIRED_COLUMNS = ("question", "chosen", "rejected")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
JSON_WHITESPACE = " \t\r"  # with "\n", the only whitespace JSON allows between values (RFC 8259)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str only where an escape held half a pair (_validate)


def numbered(rows) -> Iterator[tuple[str, dict]]:
    return ((f"row {i}", row) for i, row in enumerate(rows, start=1))


def read_folder(folder: Path) -> Iterator[tuple[str, dict]]:
    """Rows of every data file in a folder (a downloaded dataset snapshot); only the train files if it names them."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    train_files = [p for p in files if "train" in p.relative_to(folder).as_posix()]
    if not files:
        raise errors.PipelineError(f"dataset folder {folder} holds no {'/'.join(DATA_SUFFIXES)} file.")
    for file in train_files or files:
        for where, row in read_file(file):
            yield f"{file}: {where}", row


def read_file(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (position, row) pairs; the position ("line 7", "row 7") is what error messages cite.

    Each format goes through its own parser, so text comes back byte for byte: newlines (\n, \r\n) inside quoted
    CSV fields and every character JSON leaves raw in a string (U+2028, U+2029, U+0085, ...) survive.
    """
    if path.suffix == ".parquet":
        try:
            dataset = Dataset.from_parquet(str(path))
        except Exception as error:  # pyarrow's errors vary by corruption; all mean "not a readable parquet file"
            raise errors.PipelineError(f"{path} is not a readable parquet file ({error}).") from error
        yield from numbered(dataset)
        return
    text = _read_utf8(path)
    if path.suffix == ".csv":
        yield from _read_csv(text, path)
    elif path.suffix == ".json" and text.lstrip().startswith("["):
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
    records = []
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
        record = {column: row[column] for column in REQUIRED_COLUMNS} | {"system": system}
        for column, text in record.items():
            _refuse_lone_surrogate(text, source, where, column)
        records.append(record)
    if not records:
        raise errors.PipelineError(f"{source} holds no rows.")
    return Dataset.from_list(records)


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
