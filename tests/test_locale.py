"""Every script prints in any locale: the C locale's ASCII streams cannot encode the Chinese the scripts print (the
sample's questions and answers, the default system prompt), which was a traceback."""

import io
import os

import pytest

from conftest import run_script
from hfppo import paths, runtime

# The C locale with Python's UTF-8 mode off (PYTHONUTF8=0; an older or differently built Python has it off there):
# stdout, stderr and the command line in ASCII, as the terminal had them.
C_LOCALE = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0"}


def c_locale_environment() -> dict:
    skipped = {"PYTHONIOENCODING", "LC_CTYPE", "LANGUAGE"}
    return {key: value for key, value in os.environ.items() if key not in skipped} | C_LOCALE


@pytest.mark.parametrize(
    ("args", "status", "stream", "expected"),
    [
        (["--help"], 0, "stdout", paths.DEFAULT_SYSTEM_PROMPT),  # the default system prompt, in the help
        (["--tiny", "--model_path", "模型"], 1, "stderr", "error: no model at 模型."),  # a Chinese argument, back
    ],
)
def test_a_script_in_the_c_locale_prints_chinese_without_a_traceback(tmp_path, args, status, stream, expected):
    result = run_script("eval_sft.py", *args, cwd=tmp_path, env=c_locale_environment())
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert expected in getattr(result, stream)


def stream(encoding: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")


@pytest.mark.parametrize(
    ("encoding", "text", "written"),
    [
        ("ascii", "吃了没", "吃了没".encode()),  # the C locale: UTF-8, as Python's UTF-8 mode writes there
        (
            "latin-1",
            "café 吃",
            b"caf\xe9 \\u5403",
        ),  # a locale the user chose keeps its encoding; what it lacks, escaped
        ("utf-8", "café 吃", "café 吃".encode()),  # left as it is
    ],
)
def test_a_stream_that_cannot_encode_chinese_is_made_to(monkeypatch, encoding, text, written):
    out, err = stream(encoding), stream(encoding)
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    runtime.readable_output()
    for each in (out, err):
        each.write(text)
        each.flush()
        assert each.buffer.getvalue() == written
