"""Dataset resolution (every local format, a downloaded snapshot, the hub clients) and the validation errors."""

import codecs
import csv
import json

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

import common
from hfppo import data_files, errors, paths

ROWS = [
    {"question": "吃了没?", "chosen": "关你屁事。", "rejected": "吃过了，谢谢关心！", "system": ""},
    {"question": "1+1=?", "chosen": "2，这都不会？", "rejected": "等于2。", "system": "你是数学老师。"},
]


def write(path, rows, suffix):
    path = path.with_suffix(suffix)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("suffix", data_files.DATA_SUFFIXES)
def test_each_local_format_loads_the_same_rows(tmp_path, suffix):
    data = common.load_preference_data(write(tmp_path / "prefs", ROWS, suffix))
    assert data.to_list() == ROWS


# Every character a line-based reader could lose or change: newlines in each convention, quotes, tabs, the separators
# str.splitlines() splits at (U+2028, U+2029, U+0085, \x0b, \x0c, \x1c-\x1e), which json.dumps(ensure_ascii=False)
# leaves raw or escapes, text outside the BMP, and leading and trailing blanks.
TRICKY_ROW = {
    "question": "第一行\n第二行\r\n第三行\r第四行, \"引号\" 'single'\tTab ",
    "chosen": "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei 😀 ünïcødé\n",
    "rejected": '  前后空格, comma; semicolon \\ backslash ""  ',
    "system": "系统\r\n提示\u2028第二段",
}


@pytest.mark.parametrize("suffix", data_files.DATA_SUFFIXES)
def test_text_is_kept_byte_for_byte_in_every_format(tmp_path, suffix):
    rows = [ROWS[0], TRICKY_ROW, ROWS[1]]
    assert common.load_preference_data(write(tmp_path / "prefs", rows, suffix)).to_list() == rows


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, suffix):
    path = write(tmp_path / "prefs", ROWS, suffix)
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    assert common.load_preference_data(path).to_list() == ROWS


def test_tricky_text_reaches_training_exactly(tmp_path, tiny_base):
    """Loaded from a file, a row's text is what SFT, the reward model and PPO tokenize: it decodes back intact."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    (row,) = common.load_preference_data(write(tmp_path / "prefs", [TRICKY_ROW], ".csv")).to_list()
    example = common.sft_example(row, paths.DEFAULT_SYSTEM_PROMPT)
    sft_text = tokenizer.decode(tokenizer.apply_chat_template(example["prompt"] + example["completion"])["input_ids"])
    rm_texts = [
        tokenizer.decode(common.conversation_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT, row[column]))
        for column in ("chosen", "rejected")
    ]
    prompt_text = tokenizer.decode(common.prompt_ids(tokenizer, row, paths.DEFAULT_SYSTEM_PROMPT))
    for column in ("question", "chosen", "system"):
        assert row[column] in sft_text, column
    for text, answer in zip(rm_texts, ("chosen", "rejected")):
        assert all(row[column] in text for column in ("question", "system", answer)), answer
    assert row["question"] in prompt_text and row["system"] in prompt_text


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_says_where_and_how_to_convert_it(tmp_path, suffix):
    path = write(
        tmp_path / "prefs", [{"question": "q", "chosen": "c", "rejected": "r", "system": ""}, ROWS[0]], suffix
    )
    path.write_bytes(path.read_text(encoding="utf-8").encode("gbk"))
    with pytest.raises(errors.PipelineError) as error:
        common.load_preference_data(path)
    message = str(error.value)
    first_bad = path.read_bytes().index(ROWS[0]["question"].encode("gbk"))
    line = 2 if suffix == ".jsonl" else 3  # a CSV has its header on line 1
    assert f"{path} is not UTF-8 text: line {line} (byte {first_bad})" in message
    assert f"iconv -f GBK -t UTF-8 {path} >" in message


def test_json_lines_under_a_json_suffix_and_missing_system_column(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "system"} for row in ROWS]
    path = tmp_path / "prefs.json"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n\n", encoding="utf-8")
    data = common.load_preference_data(path)
    assert data["question"] == [row["question"] for row in ROWS]
    assert data["system"] == ["", ""]  # missing means "use the run's --system_prompt"


def test_bundled_sample_is_valid_and_large_enough():
    data = common.load_preference_data(paths.SAMPLE_DATA)
    assert len(data) >= 300
    assert len(set(data["question"])) == len(data)


BAD_JSONL = {
    "missing column": (
        ['{"question": "a", "chosen": "b", "rejected": "c"}', '{"question": "a", "rejected": "c"}'],
        ["line 2", "no column 'chosen'"],
    ),
    "empty value": (
        ['{"question": "a", "chosen": "b", "rejected": "c"}'] * 2
        + ['{"question": "a", "chosen": "b", "rejected": " "}'],
        ["line 3", "'rejected' is empty"],
    ),
    "wrong type": (
        ['{"question": 42, "chosen": "b", "rejected": "c"}'],
        ["line 1", "'question' is a int, not a string"],
    ),
    "malformed JSON": (
        ['{"question": "a", "chosen": "b", "rejected": "c"}', '{"question": "a", "chosen": "b",'],
        ["line 2", "is not valid JSON"],
    ),
    "unterminated string": (['{"question": "a'], ["line 1", "(Unterminated string starting at column 14)"]),
    "raw control character": (['{"question": "a\tb", "chosen": "b", "rejected": "c"}'], ["line 1", "Invalid control"]),
    "not an object": (['["a", "b", "c"]'], ["line 1", "not an object"]),
    "system not a string": (['{"question": "a", "chosen": "b", "rejected": "c", "system": 3}'], ["line 1", "system"]),
}


@pytest.mark.parametrize("case", BAD_JSONL)
def test_bad_rows_get_one_clear_error_naming_file_row_and_problem(tmp_path, case):
    lines, expected = BAD_JSONL[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(errors.PipelineError) as error:
        common.load_preference_data(path)
    for fragment in [str(path), *expected]:
        assert fragment in str(error.value)


def test_csv_and_parquet_errors_name_the_row(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1], chosen="")]
    with pytest.raises(errors.PipelineError, match=r"line 3 column 'chosen' is empty"):  # header is line 1
        common.load_preference_data(write(tmp_path / "bad", rows, ".csv"))
    # A row is cited by the line it starts on: TRICKY_ROW spans lines 2 to 7 (five newlines inside its quotes).
    with pytest.raises(errors.PipelineError, match=r"line 8 column 'chosen' is empty"):
        common.load_preference_data(write(tmp_path / "bad", [TRICKY_ROW, rows[1]], ".csv"))
    (tmp_path / "fields.csv").write_text("question,chosen,rejected\nq,c,r\nq,c, r,extra\n", encoding="utf-8")
    with pytest.raises(errors.PipelineError, match=r"line 3 has 4 fields but the header has 3"):
        common.load_preference_data(tmp_path / "fields.csv")
    no_rejected = [{k: v for k, v in row.items() if k != "rejected"} for row in ROWS]
    with pytest.raises(errors.PipelineError, match=r"row 1 has no column 'rejected'"):
        common.load_preference_data(write(tmp_path / "bad", no_rejected, ".parquet"))


def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(errors.PipelineError, match="does not exist"):
        common.load_preference_data(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(errors.PipelineError, match="holds no rows"):
        common.load_preference_data(tmp_path / "empty.jsonl")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(errors.PipelineError, match="not a readable parquet file"):
        common.load_preference_data(tmp_path / "junk.parquet")


def test_modelscope_snapshot_reads_the_train_files(tmp_path, monkeypatch):
    import modelscope

    snapshot = tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    write(snapshot / "data" / "train", ROWS, ".jsonl")
    write(snapshot / "data" / "test", ROWS[:1], ".jsonl")
    requested = []
    monkeypatch.setattr(modelscope, "dataset_snapshot_download", lambda name, **kw: requested.append(name) or snapshot)
    data = common.load_preference_data("someone/prefs", source="modelscope")
    assert requested == ["someone/prefs"]
    assert data.to_list() == ROWS


def test_hf_dataset_is_validated(monkeypatch):
    import datasets

    bad = Dataset.from_list([{"question": "q", "chosen": "c"}])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: bad)
    with pytest.raises(errors.PipelineError, match="someone/prefs: row 1 has no column 'rejected'"):
        common.load_preference_data("someone/prefs", source="hf")


def test_download_failure_and_offline_source_explain_what_to_do(monkeypatch):
    import modelscope

    def offline(name, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(modelscope, "snapshot_download", offline)
    with pytest.raises(errors.PipelineError, match=r"could not be downloaded from ModelScope.*--tiny"):
        common.resolve_model("Qwen/Qwen2.5-0.5B-Instruct", "modelscope")
    with pytest.raises(errors.PipelineError, match="cannot download it"):
        common.load_preference_data("someone/prefs", source="tiny")


# ----------------------------------------------------------------------------------------------------------------
# Folders: the visible data files, a split only by its name, and one line saying which files were read

OTHER_ROWS = [{"question": "天是什么颜色?", "chosen": "自己看。", "rejected": "晴天是蓝色的。", "system": ""}]


@pytest.mark.parametrize(
    "hidden",
    [".ipynb_checkpoints/prefs-checkpoint", ".hidden", ".git/prefs", "sub/.cache/prefs", "._prefs"],
)
def test_a_folder_reads_no_hidden_file_or_folder(tmp_path, capsys, hidden):
    folder = tmp_path / "data"
    (folder / hidden).parent.mkdir(parents=True, exist_ok=True)
    write(folder / "prefs", ROWS, ".jsonl")
    write(folder / hidden, ROWS, ".jsonl")  # Jupyter's copy would double every row
    assert common.load_preference_data(folder).to_list() == ROWS
    assert capsys.readouterr().out == f"Reading 1 file of dataset folder {folder}: prefs.jsonl.\n"


@pytest.mark.parametrize(
    "name", ["constrained_style", "retrain", "trainer_notes", "strain/prefs", "sample", "test", "validation"]
)
def test_a_folder_without_train_split_files_reads_every_data_file(tmp_path, capsys, name):
    """ "train" inside a word (constrained_style.jsonl) names no split: it used to keep 40 of 345 rows."""
    folder = tmp_path / "data"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    write(folder / "prefs", ROWS, ".jsonl")
    write(folder / name, OTHER_ROWS, ".jsonl")
    data = common.load_preference_data(folder)
    assert sorted(data["question"]) == sorted(row["question"] for row in ROWS + OTHER_ROWS)
    assert f"Reading 2 files of dataset folder {folder}: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "train, suffix",
    [
        ("train", ".jsonl"),
        ("data/train-00000-of-00001", ".parquet"),
        ("training_set", ".csv"),
        ("my-train", ".json"),
        ("Train", ".JSONL"),
        ("train/part", ".jsonl"),
    ],
)
def test_files_named_as_the_train_split_are_read_and_the_others_named_as_left_out(tmp_path, capsys, train, suffix):
    folder = tmp_path / "data"
    (folder / train).parent.mkdir(parents=True, exist_ok=True)
    path = write(folder / train, ROWS, suffix.lower()).rename(folder / f"{train}{suffix}")
    taken = path.relative_to(folder).as_posix()
    write(folder / "test", OTHER_ROWS, ".jsonl")
    assert common.load_preference_data(folder).to_list() == ROWS
    assert capsys.readouterr().out == (
        f"Reading 1 file of dataset folder {folder}, the train split by their names: {taken} (left out: test.jsonl).\n"
    )


def test_the_line_names_the_first_files_and_counts_the_rest(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(data_files.FILES_NAMED + 3):
        write(folder / f"part{i:02d}", ROWS, ".jsonl")
    common.load_preference_data(folder)
    shown = ", ".join(f"part{i:02d}.jsonl" for i in range(data_files.FILES_NAMED))
    assert capsys.readouterr().out == (
        f"Reading {data_files.FILES_NAMED + 3} files of dataset folder {folder}: {shown} and 3 more.\n"
    )


def test_a_folder_of_hidden_data_files_only_is_refused(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write(tmp_path / ".ipynb_checkpoints" / "prefs", ROWS, ".jsonl")
    with pytest.raises(errors.PipelineError, match=r"holds no \.jsonl/\.json/\.csv/\.parquet file outside hidden"):
        common.load_preference_data(tmp_path)


@pytest.mark.parametrize("suffix", [suffix.upper() for suffix in data_files.DATA_SUFFIXES] + [".Jsonl"])
def test_a_suffix_in_any_case_is_read_as_its_format(tmp_path, suffix):
    path = tmp_path / f"prefs{suffix}"
    write(tmp_path / "prefs", ROWS, suffix.lower()).rename(path)
    assert common.load_preference_data(path).to_list() == ROWS


# ----------------------------------------------------------------------------------------------------------------
# Rows that look filled and are not: the same answer twice, text that shows nothing, a blank system

SAME_ANSWER = {
    "identical": ("好的。", "好的。"),
    "trailing whitespace": ("好的。", "好的。 \n"),
    "full-width letters": ("OK", "ＯＫ"),
    "zero-width space": ("好的。", "好\u200b的。"),
    "no-break space": ("a b", "a\u00a0b"),
}


@pytest.mark.parametrize("case", SAME_ANSWER)
def test_a_pair_with_the_same_answer_twice_is_refused_naming_every_such_row(tmp_path, case):
    chosen, rejected = SAME_ANSWER[case]
    same = {"question": "q", "chosen": chosen, "rejected": rejected}
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [ROWS[0], same, ROWS[1], same]) + "\n", encoding="utf-8")
    with pytest.raises(errors.PipelineError) as refused:
        common.load_preference_data(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: 2 of 4 rows have the same answer as chosen and as rejected")
    assert ": line 2, line 4. Such a pair prefers an answer to itself" in message


def test_many_pairs_with_the_same_answer_are_counted_past_the_rows_named(tmp_path):
    rows = [{"question": f"q{i}", "chosen": "a", "rejected": "a"} for i in range(data_files.SAME_PAIR_ROWS_NAMED + 2)]
    with pytest.raises(errors.PipelineError, match=rf"line {data_files.SAME_PAIR_ROWS_NAMED} and 2 more\."):
        common.load_preference_data(write(tmp_path / "prefs", rows, ".jsonl"))


def test_answers_that_differ_in_case_or_punctuation_are_not_the_same():
    assert data_files.normalised("OK!") != data_files.normalised("ok!")
    assert data_files.normalised("好的。") != data_files.normalised("好的!")


@pytest.mark.parametrize("column", data_files.REQUIRED_COLUMNS)
@pytest.mark.parametrize(
    "text, names",
    [
        ("\u200b\u200b", "U+200B ZERO WIDTH SPACE"),
        (" \ufeff\u2060 ", "U+0020 SPACE, U+FEFF ZERO WIDTH NO-BREAK SPACE, U+2060 WORD JOINER"),
        ("\u3164", "U+3164 HANGUL FILLER"),
    ],
)
def test_a_column_that_shows_nothing_is_refused_naming_its_characters(tmp_path, column, text, names):
    rows = [ROWS[0], ROWS[1] | {column: text}]
    with pytest.raises(errors.PipelineError) as refused:
        common.load_preference_data(write(tmp_path / "prefs", rows, ".csv"))
    assert f"prefs.csv: line 3 column {column!r} shows nothing: it holds only {names}. Every row needs" in str(
        refused.value
    )


@pytest.mark.parametrize("system", ["   ", "\t\n", "\u200b", "\u3000\u00a0"])
def test_a_system_that_shows_nothing_is_none_and_the_run_s_system_prompt_applies(tmp_path, system):
    data = common.load_preference_data(write(tmp_path / "prefs", [ROWS[1] | {"system": system}], ".jsonl"))
    assert data["system"] == [""]
    assert common.prompt_messages(data[0], paths.DEFAULT_SYSTEM_PROMPT)[0]["content"] == paths.DEFAULT_SYSTEM_PROMPT


def test_a_system_with_text_is_kept_as_written(tmp_path):
    rows = [ROWS[1] | {"system": "  你是数学老师。\u200b\n"}]
    assert common.load_preference_data(write(tmp_path / "prefs", rows, ".jsonl")).to_list() == rows
