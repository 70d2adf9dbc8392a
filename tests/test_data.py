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
