"""Ctrl-C, two runs building the tiny base at once, a stale base read by the stages that must not rebuild it, and text
no tokenizer can encode: each ends in one line that says what happened and what was kept, never a traceback."""

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

import common
from conftest import SCRIPT_TIMEOUT_S
from hfppo import checkpoints, errors, hints, lifecycle, paths, resuming, tiny

ROW = {"question": "吃了没?", "chosen": "关你屁事。", "rejected": "吃过了，谢谢关心！"}
# A sample of the tiny preset's shape that builds a base: any two rows do, the build itself is replaced in these tests.
SAMPLE_ROWS = [ROW, {"question": "1+1=?", "chosen": "2，这都不会？", "rejected": "等于2。"}]


# ----------------------------------------------------------------------------------------------------------------
# Data: JSON escapes that parse into no text


@pytest.mark.parametrize(
    "suffix, text, column, where, escape, position",
    [
        (".jsonl", '{"question": "a\\ud800b", "chosen": "x", "rejected": "y"}', "question", "line 2", "\\ud800", 2),
        (".jsonl", '{"question": "q", "chosen": "x", "rejected": "\\ude00\\ud83d"}', "rejected", "line 2",
         "\\ude00", 1),
        (".json", '[{"question": "q", "chosen": "x", "rejected": "y", "system": "s\\udfff"}]', "system", "row 1",
         "\\udfff", 2),
    ],
)  # fmt: skip
def test_a_lone_surrogate_escape_is_refused_naming_file_row_and_column(
    tmp_path, suffix, text, column, where, escape, position
):
    path = tmp_path / f"prefs{suffix}"
    first = json.dumps(ROW, ensure_ascii=False) + "\n" if suffix == ".jsonl" else ""
    path.write_text(first + text + "\n", encoding="utf-8")
    with pytest.raises(errors.PipelineError) as error:
        common.load_preference_data(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where} column {column!r} holds the escape {escape} at character {position}")
    assert "no tokenizer can encode it" in message and "Write the character itself" in message


def test_a_whole_surrogate_pair_is_the_character_it_encodes(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"question": "\\ud83d\\ude00", "chosen": "x", "rejected": "y"}\n', encoding="utf-8")
    assert common.load_preference_data(path)["question"] == ["😀"]


# ----------------------------------------------------------------------------------------------------------------
# The tiny base: built once under a lock, validated data first, never rebuilt by a stage that reads it


@pytest.fixture
def preset_folder(tmp_path, monkeypatch):
    """A working folder with a sample of its own, where building the tiny base only records the call (and stamps
    today's recipe, as the real build does)."""
    monkeypatch.chdir(tmp_path)
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in SAMPLE_ROWS), encoding="utf-8")
    monkeypatch.setattr(paths, "SAMPLE_DATA", sample)
    builds = []

    def build(path, texts, polite, seed=tiny.TINY_SEED):
        builds.append(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / tiny.TINY_RECIPE_FILE).write_text(json.dumps(tiny.tiny_recipe(seed)))

    monkeypatch.setattr(tiny, "build_tiny_base", build)
    return builds


def stale_base():
    """The preset's base folder, stamped by another recipe."""
    paths.TINY_BASE_DIR.mkdir(parents=True)
    (paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE).write_text(json.dumps(tiny.tiny_recipe() | {"seed": -1}))


def test_a_second_run_waits_for_the_one_building_the_tiny_base_and_reuses_it(preset_folder, capsys):
    """As two scripts started together: while one process holds the base's lock (building it), another that needs
    the base says so and waits, then finds it built and builds nothing."""
    first = checkpoints.try_lock(paths.TINY_BASE_DIR)  # the first run, building
    assert first is not None
    second = threading.Thread(target=common.resolve_model, args=(paths.TINY_BASE_DIR, "tiny"))
    second.start()
    deadline = time.monotonic() + 60
    waited = ""
    while "Waiting for another process building the tiny base" not in waited and time.monotonic() < deadline:
        time.sleep(0.05)
        waited += capsys.readouterr().out
    assert f"Waiting for another process building the tiny base at {paths.TINY_BASE_DIR}" in waited
    assert second.is_alive() and not preset_folder  # waiting, not building
    paths.TINY_BASE_DIR.mkdir(parents=True)  # the first run's build, done
    (paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE).write_text(json.dumps(tiny.tiny_recipe()))
    first.close()
    second.join(timeout=60)
    assert not second.is_alive() and preset_folder == []


def test_a_missing_tiny_base_is_built_once_and_then_reused(preset_folder):
    assert common.resolve_model(paths.TINY_BASE_DIR, "tiny") == str(paths.TINY_BASE_DIR)
    assert common.resolve_model(paths.TINY_BASE_DIR, "tiny") == str(paths.TINY_BASE_DIR)
    assert preset_folder == [paths.TINY_BASE_DIR]


@pytest.mark.parametrize("rebuild_stale", [True, False])
def test_a_bad_sample_fails_before_the_tiny_base_is_built(preset_folder, rebuild_stale):
    """A row appended to the sample makes the base stale (its SHA-256 is in the recipe); a bad one fails with the
    data's message before any build, and a stage that only reads the base never builds it."""
    with paths.SAMPLE_DATA.open("a", encoding="utf-8") as file:
        file.write('{"question": "q", "chosen": "x"}\n')
    with pytest.raises(errors.PipelineError, match=f"{paths.SAMPLE_DATA}: line 3 has no column 'rejected'"):
        common.resolve_model(paths.TINY_BASE_DIR, "tiny", rebuild_stale)  # missing: built, after the data
    stale_base()
    if rebuild_stale:
        with pytest.raises(errors.PipelineError, match="line 3 has no column 'rejected'"):
            common.resolve_model(paths.TINY_BASE_DIR, "tiny")
    else:
        assert common.resolve_model(paths.TINY_BASE_DIR, "tiny", rebuild_stale=False) == str(paths.TINY_BASE_DIR)
    assert preset_folder == []


def test_a_stale_tiny_base_is_rebuilt_only_by_the_stages_that_train_from_it(preset_folder, capsys):
    """The duplicate row appended to the sample: the comparison, the page and PPO read the base beside models
    trained from it, so they use it as it is (a new one has another tokenizer, which those models refuse)."""
    with paths.SAMPLE_DATA.open("a", encoding="utf-8") as file:
        file.write(json.dumps(ROW, ensure_ascii=False) + "\n")
    stale_base()
    before = (paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE).read_text()
    assert common.resolve_model(paths.TINY_BASE_DIR, "tiny", rebuild_stale=False) == str(paths.TINY_BASE_DIR)
    assert preset_folder == [] and (paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE).read_text() == before
    assert f"note: {paths.TINY_BASE_DIR} was built by another recipe" in capsys.readouterr().out
    common.resolve_model(paths.TINY_BASE_DIR, "tiny")
    assert preset_folder == [paths.TINY_BASE_DIR]


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C


def interrupted(capsys, rank: str = "0") -> tuple[int, str]:
    """The exit status and stderr of a KeyboardInterrupt raised inside user_errors, in the process of `rank`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_info, lifecycle.user_errors():
            raise KeyboardInterrupt
    return exit_info.value.code, capsys.readouterr().err


def test_ctrl_c_in_a_run_that_locked_no_output_folder_saved_nothing(capsys, monkeypatch):
    monkeypatch.setattr(lifecycle, "_RUN", {})  # an evaluation, or a training stopped before it locked its folder
    handler = signal.getsignal(signal.SIGINT)
    assert interrupted(capsys) == (130, "\nInterrupted: nothing was saved.\n")
    assert signal.getsignal(signal.SIGINT) is handler  # a second Ctrl-C is ignored only while the line is written
    assert interrupted(capsys, rank="1") == (130, "")  # the other processes of an accelerate launch stay quiet


def periodic(output_dir, step: int, settings: bool = True, mtime: float | None = None):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if settings:
        resuming.write_run_settings(folder, {})
        if mtime is not None:
            os.utime(folder / resuming.RUN_SETTINGS_FILE, (mtime, mtime))
    return folder


def test_ctrl_c_says_what_the_run_kept_of_its_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lifecycle, "_RUN", {})
    argv = ["train_sft.py", "--tiny", "--resume_from_checkpoint", "old", "--save_steps", "5"]  # resumed once already
    monkeypatch.setattr(sys, "argv", argv)
    output = tmp_path / "sft"
    periodic(output, 40, mtime=time.time() - 3600)  # an earlier run's, left in the folder
    (output / "config.json").write_text("{}")
    os.utime(output / "config.json", (time.time() - 3600,) * 2)
    lifecycle.lock_output_dir(output)
    assert interrupted(capsys)[1] == f"\nInterrupted: nothing of this run was saved; {output} is as it was.\n"

    periodic(output, 5)
    periodic(output, 10)
    periodic(output, 15, settings=False)  # being saved when the Ctrl-C came: not a checkpoint yet
    last = output / "checkpoint-10"
    resume = shlex.join(
        [hints.python_command(), "train_sft.py", "--tiny", "--save_steps", "5", "--resume_from_checkpoint", str(last)]
    )
    assert interrupted(capsys) == (130, f"\nInterrupted: the last periodic checkpoint, {last}, resumes it: {resume}\n")

    # The final save done, its swap stopped half-way: the run's model is put in place and named.
    ready = checkpoints.sibling(output, checkpoints.READY)
    ready.mkdir()
    checkpoints.mark_staging(ready, output)
    (ready / "config.json").write_text("{}")
    saved = f"\nInterrupted: this run's model was saved to {output} before the interruption.\n"
    assert interrupted(capsys)[1] == saved
    assert not ready.exists() and (output / "checkpoint-10").is_dir()


def test_ctrl_c_in_a_new_output_folder_before_any_save(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lifecycle, "_RUN", {})
    lifecycle.lock_output_dir(tmp_path / "new")
    assert interrupted(capsys)[1] == "\nInterrupted: nothing of this run was saved.\n"


def test_ctrl_c_during_training_ends_with_one_line_and_the_command_that_resumes(tiny_base, tmp_path):
    """A user's Ctrl-C (SIGINT to the script's process group) once train_sft.py saved its first periodic checkpoint:
    exit status 130, no traceback, and a last line naming that checkpoint with a command that resumes from it."""
    flags = ["--tiny", "--model_name_or_path", str(tiny_base), "--num_train_epochs", "1"]
    flags += ["--save_strategy", "steps", "--save_steps", "5"]
    command = [sys.executable, str(paths.ROOT / "train_sft.py"), *flags]
    output = tmp_path / paths.SFT_DIR
    # Its output is read at the end: the pipes hold its few kilobytes until then. A new session, as a terminal's job;
    # SIGINT at its default, which Python turns into KeyboardInterrupt (a process started in the background of a
    # shell without job control inherits it ignored).
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + SCRIPT_TIMEOUT_S
        while not (output / "checkpoint-5" / resuming.RUN_SETTINGS_FILE).is_file():
            if process.poll() is not None:
                pytest.fail(f"train_sft.py ended before saving checkpoint-5:\n{process.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, "train_sft.py saved no periodic checkpoint"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=SCRIPT_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):  # ended already
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert "SFT of" in stdout  # training had begun
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert not (output / "config.json").exists()  # no final model: the run stopped before its end
    saved = [p for p in output.glob("checkpoint-*") if (p / resuming.RUN_SETTINGS_FILE).is_file()]
    last = max(saved, key=lambda p: int(p.name.split("-")[1])).relative_to(tmp_path)
    line = stderr.rstrip("\n").split("\n")[-1]
    prefix = f"Interrupted: the last periodic checkpoint, {last}, resumes it: "
    assert line.startswith(prefix)
    resume = shlex.split(line.removeprefix(prefix))
    assert resume[1:] == [str(paths.ROOT / "train_sft.py"), *flags, "--resume_from_checkpoint", str(last)]

    # The command works as printed (with this interpreter for `python`) and finishes the run.
    result = subprocess.run([sys.executable, *resume[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (output / "config.json").is_file()
