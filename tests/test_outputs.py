"""The one guard of every path a script writes: output folders, metrics files and charts never land on the run's
inputs (its models and --dataset_name), a model another stage reads, a checkpoint's own files, the project's own
files (code, docs, configuration, data) or the TensorBoard runs, nor on a file or link a save's swap breaks; every
path is checked writable before the work and written atomically; a full disk fails with what was kept; another
run's periodic checkpoints are named before training, never pruned over; and hints never suggest overwriting a model
of another kind."""

import errno
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import compare
import train_ppo
from conftest import run_main
from hfppo import charts, checkpoints, cli, errors, hints, outputs, paths, ppo_setup, resuming


def fake_checkpoint(folder, architecture="Qwen2ForCausalLM", value=1.0):
    """A model folder as require_checkpoint and the guard see one: config, weights, tokenizer config."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    save_file({"lm_head.weight": torch.full((4,), value)}, folder / "model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def fake_adapter(folder):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "checkpoint/sft"}))
    save_file({"lora_A.weight": torch.zeros(4)}, folder / "adapter_model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def snapshot(folder):
    """Every file under `folder` with its bytes: what a refused run must leave exactly as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# Files a script writes: metrics and charts


def target(tmp_path, case):
    """(the --metrics_file for `case`, the inputs of the run, the message expected)."""
    fake_checkpoint(tmp_path / "checkpoint" / "sft")
    (tmp_path / "prefs").mkdir()
    (tmp_path / "prefs" / "rows.jsonl").write_text('{"question": "q", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "a_file").write_text("")
    (tmp_path / "loop").symlink_to("loop")
    return {
        "a checkpoint's config": (tmp_path / "checkpoint" / "sft" / "config.json", "is inside the checkpoint"),
        "a new file among a model's": (tmp_path / "checkpoint" / "sft" / "notes.json", "is inside the checkpoint"),
        "the bundled data": (paths.SAMPLE_DATA, "is inside the pipeline's data folder"),
        "the dataset": (tmp_path / "prefs" / "rows.jsonl", "is --dataset_name"),
        "inside the dataset folder": (tmp_path / "prefs" / "metrics.json", "is inside --dataset_name"),
        "a folder": (tmp_path / "prefs", "is a folder"),
        "under a file": (tmp_path / "a_file" / "metrics.json", "cannot write --metrics_file"),
        "a link to itself": (tmp_path / "loop", "cannot be followed to a place"),
        "an empty path": ("", "is a folder"),  # the current folder: the default was taken in silence
        "the README": (paths.ROOT / "README.md", "is the project's documentation"),
        "beside the README's charts": (paths.ROOT / "imgs" / "compare.json", "is inside the project's documentation"),
        "the code": (paths.ROOT / "hfppo" / "outputs.py", "is inside the project's code"),
    }[case]


FILE_CASES = [
    "a checkpoint's config",
    "a new file among a model's",
    "the bundled data",
    "the dataset",
    "inside the dataset folder",
    "a folder",
    "under a file",
    "a link to itself",
    "an empty path",
    "the README",
    "beside the README's charts",
    "the code",
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_the_guard_refuses_a_file_path_that_would_destroy_or_lose_something(tmp_path, case):
    path, message = target(tmp_path, case)
    data_before, before = snapshot(paths.ROOT / "data"), snapshot(tmp_path)
    dataset = tmp_path / ("prefs" if case == "inside the dataset folder" else "prefs/rows.jsonl")
    with pytest.raises(errors.PipelineError, match=message):
        outputs.check_output_file(path, "--metrics_file", {"dataset_name": dataset}, "the metrics")
    assert snapshot(tmp_path) == before and snapshot(paths.ROOT / "data") == data_before


@pytest.mark.parametrize("free, refused", [(0, True), (outputs.REPORT_BYTES - 1, True), (outputs.REPORT_BYTES, False)])
def test_the_guard_refuses_a_file_on_a_disk_without_room_for_it_before_the_work(tmp_path, monkeypatch, free, refused):
    """A full disk still lets an empty file be created (check_writable passes): only its free space tells."""
    monkeypatch.setattr(
        outputs.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(2**30, 2**30 - free, free)
    )
    path = tmp_path / "metrics.json"
    if refused:
        with pytest.raises(errors.PipelineError, match=f"its disk has {free // 1024} KiB free.*lost after the work"):
            outputs.check_output_file(path, "--metrics_file", {}, "the metrics")
    else:
        assert outputs.check_output_file(path, "--metrics_file", {}, "the metrics") == path
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", paths.REPORT_FILES)
def test_the_eval_reports_may_sit_beside_the_model_they_evaluate(tmp_path, name):
    fake_checkpoint(tmp_path / "rm", "Qwen2ForSequenceClassification")
    assert outputs.check_output_file(tmp_path / "rm" / name, "--metrics_file", {"dataset_name": None}, "x")
    outputs.check_output_file(tmp_path / "new" / "deep" / "m.json", "--metrics_file", {}, "x")  # made at the write


@pytest.mark.parametrize(
    "script, flags",
    [("eval_rm.py", ()), ("compare.py", ())],
    ids=["eval_rm", "compare"],
)
@pytest.mark.parametrize("case", FILE_CASES)
def test_an_eval_script_refuses_its_metrics_file_before_any_work(tmp_path, script, flags, case):
    """No model exists here: had the script started its work, it would have failed on the missing model instead."""
    path, message = target(tmp_path, case)
    if case == "an empty path":  # the parser refuses it first, as every empty path flag (cli.is_path_field)
        message = "--metrics_file is empty"
    dataset = tmp_path / ("prefs" if case == "inside the dataset folder" else "prefs/rows.jsonl")
    data_before, before = snapshot(paths.ROOT / "data"), snapshot(tmp_path)
    args = ("--tiny", *flags, "--dataset_name", dataset, "--metrics_file", path)
    result = run_main(script, *args, cwd=tmp_path)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr and "no model at" not in result.stderr
    assert snapshot(tmp_path) == before and snapshot(paths.ROOT / "data") == data_before


def test_an_atomic_write_that_fails_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    outputs.write_text_atomic(path, "old")
    with pytest.raises(errors.PipelineError, match="No space left on device.*the file there is unchanged"):
        with outputs.atomic_file(path) as temporary:
            temporary.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    outputs.write_text_atomic(path, "new 新")
    assert path.read_text(encoding="utf-8") == "new 新" and list(tmp_path.iterdir()) == [path]


def link_to_a_file(tmp_path):
    (tmp_path / "target.json").write_text("old")
    (tmp_path / "link.json").symlink_to("target.json")
    return (
        tmp_path / "link.json",
        lambda: (tmp_path / "link.json").is_symlink() and ((tmp_path / "target.json").read_text() == "new"),
    )


def descriptor_of_a_file(tmp_path):
    """As /dev/stdout redirected to a file: a link to /proc/self/fd/N, open on it."""
    captured = (tmp_path / "captured.txt").open("w")
    inode = os.fstat(captured.fileno()).st_ino
    (tmp_path / "stdout").symlink_to(f"/proc/self/fd/{captured.fileno()}")
    return (
        tmp_path / "stdout",
        lambda: (
            (captured.close() or (tmp_path / "captured.txt").stat().st_ino == inode)
            and (tmp_path / "captured.txt").read_text() == "new"
        ),
    )


# What a user passes as a file to write that is not a plain file: the guard lets it be, and the write goes through
# it, never replaces it (a rename over os.devnull as root would replace the device itself with a file; one through
# /dev/stdout, the file the shell redirects the output into).
NOT_PLAIN_FILES = {
    "a link to a file": link_to_a_file,
    "a descriptor's link to a file": descriptor_of_a_file,
    "a device": lambda tmp_path: (Path(os.devnull), lambda: Path(os.devnull).is_char_device()),
}


@pytest.mark.parametrize("case", NOT_PLAIN_FILES)
def test_an_atomic_write_goes_through_a_link_or_into_a_device_without_replacing_it(tmp_path, case, monkeypatch):
    path, kept = NOT_PLAIN_FILES[case](tmp_path)
    replaced, replace = [], os.replace
    # Record the renames, and make only those into tmp_path: a broken atomic_file must not replace os.devnull here.
    monkeypatch.setattr(
        outputs.os,
        "replace",
        lambda source, dest: (
            replaced.append(Path(dest)),
            Path(dest).is_relative_to(tmp_path) and replace(source, dest),
        ),
    )
    assert outputs.check_output_file(path, "--metrics_file", {}, "the metrics") == path
    outputs.write_text_atomic(path, "new")
    assert path not in replaced and kept()
    assert not [p for p in tmp_path.iterdir() if outputs.TEMPORARY in p.name]


def chart_events(run_dir):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run_dir) as writer:
        for step in range(3):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)


WRITERS = {
    "save_train_results": lambda folder: outputs.save_train_results(folder, 1.0, 2.0),
    "write_run_settings": lambda folder: resuming.write_run_settings(folder, {"seed": 0}),
    "plot_scalars": lambda folder: (chart_events(folder), charts.plot_scalars(folder, ["train/loss"], "t"))[1],
    "compare.plot_methods": lambda folder: compare.plot_methods(
        {"sft": {"intervals": {key: {"mean": 0.5, "low": 0.4, "high": 0.6} for key in compare.CHART_METRICS}}},
        folder / compare.CHART_FILE,
    ),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_report_writer_writes_through_the_atomic_rename(tmp_path, writer, monkeypatch):
    folder = tmp_path / "sft" / "run"
    folder.mkdir(parents=True)
    replaced, replace = [], os.replace
    monkeypatch.setattr(outputs.os, "replace", lambda source, dest: (replaced.append(dest), replace(source, dest))[1])
    WRITERS[writer](folder)
    assert replaced and all(os.path.getsize(dest) > 0 for dest in replaced)
    assert not [p for p in folder.iterdir() if outputs.TEMPORARY in p.name]


# ----------------------------------------------------------------------------------------------------------------
# Output folders


def output_dir_case(tmp_path, case):
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "target").mkdir()
    fake_checkpoint(tmp_path / "models" / "sft")
    return {
        "an existing file": (tmp_path / "a_file", "is a file, not a folder"),
        "a link": (tmp_path / "link", "is a link to"),
        "a staging name that is a file": (tmp_path / "out", "staging name"),
        "under tensorboard/<stage>": (paths.TENSORBOARD_ROOT / "sft", "is inside the TensorBoard runs' folder"),
        "the tensorboard folder": (paths.TENSORBOARD_ROOT, "is the TensorBoard runs' folder"),
        "inside a checkpoint": (tmp_path / "models" / "sft" / "sub", "is inside the checkpoint"),
        "inside the bundled data": (paths.ROOT / "data" / "out", "is inside the pipeline's data folder"),
        "a link to itself": (tmp_path / "loop", "cannot be followed to a place"),
    }[case]


OUTPUT_DIR_CASES = [
    "an existing file",
    "a link",
    "a staging name that is a file",
    "under tensorboard/<stage>",
    "the tensorboard folder",
    "inside a checkpoint",
    "inside the bundled data",
    "a link to itself",
]


def prepare(tmp_path, case):
    path, message = output_dir_case(tmp_path, case)
    if case == "a link":
        path.symlink_to(tmp_path / "target")
    if case == "a link to itself":
        path.symlink_to(path.name)
    if case == "a staging name that is a file":
        checkpoints.sibling(path, checkpoints.READY).write_text("")
    return path, message


@pytest.mark.parametrize("case", OUTPUT_DIR_CASES)
def test_the_guard_refuses_an_output_folder_that_the_save_would_break_or_destroy(tmp_path, case, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, message = prepare(tmp_path, case)
    before = snapshot(tmp_path)
    with pytest.raises(errors.ArgumentError, match=message):
        outputs.check_output_dir(path, {})
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", OUTPUT_DIR_CASES)
def test_train_sft_refuses_such_an_output_folder_before_it_trains(tmp_path, case):
    path, message = prepare(tmp_path, case)
    before = snapshot(tmp_path)
    result = run_main("train_sft.py", "--tiny", "--output_dir", path, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / paths.TINY_BASE_DIR).exists()  # nothing built


# (script, its flags, the model its --output_dir already holds, that model's kind): another kind than the script
# writes in the mode its flags choose (DPO without LoRA writes a whole model).
OTHER_KINDS = [
    ("train_sft.py", (), lambda folder: fake_checkpoint(folder, "Qwen2ForSequenceClassification"), "a reward model"),
    ("train_rm.py", (), fake_checkpoint, "a language model"),
    ("train_ppo.py", (), fake_checkpoint, "a language model"),
    ("train_dpo.py", (), lambda folder: fake_checkpoint(folder, "Qwen2ForSequenceClassification"), "a reward model"),
    ("train_dpo.py", (), fake_checkpoint, "a language model"),
    ("train_dpo.py", ("--use_peft", "false"), fake_adapter, "an adapter"),
    ("train_grpo.py", (), fake_checkpoint, "a language model"),
]


@pytest.mark.parametrize(
    "script, flags, model, held",
    OTHER_KINDS,
    ids=[f"{case[0]} {' '.join(case[1])} over {case[3]}" for case in OTHER_KINDS],
)
def test_a_stage_refuses_an_output_folder_holding_a_model_of_another_kind(tmp_path, script, flags, model, held):
    """train_sft.py --output_dir checkpoint/rm replaced the reward model with a language model, exit 0; and
    train_dpo.py --use_peft false, taken for a writer of adapters, replaced PPO's adapter with a whole model."""
    model(tmp_path / "other")
    before = snapshot(tmp_path)
    result = run_main(script, "--tiny", *flags, "--output_dir", tmp_path / "other", cwd=tmp_path)
    assert result.returncode == 2 and f"holds {held}, and this script writes" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "script, use_peft, kind",
    [
        ("train_dpo.py", True, "adapter"),
        ("train_dpo.py", False, "language model"),
        ("train_grpo.py", False, "language model"),
        ("train_sft.py", False, "language model"),
        ("train_rm.py", False, "reward model"),
        ("train_ppo.py", None, "adapter"),
        ("export.py", None, "language model"),
    ],
)
def test_what_a_script_writes_follows_its_use_peft(script, use_peft, kind):
    assert hints.writes(script, use_peft) == kind


def test_dpo_without_lora_may_replace_a_whole_model_of_its_own(tmp_path):
    fake_checkpoint(tmp_path / "mine")
    outputs.check_output_dir(tmp_path / "mine", {}, 0, "train_dpo.py", use_peft=False)


@pytest.mark.parametrize("script", ["train_sft.py", "train_rm.py", "train_ppo.py"])
def test_a_stage_may_replace_a_model_of_its_own_kind(tmp_path, script):
    {
        "language model": fake_checkpoint,
        "reward model": lambda f: fake_checkpoint(f, "Qwen2ForSequenceClassification"),
    }.get(hints.WRITES[script], fake_adapter)(tmp_path / "mine")
    outputs.check_output_dir(tmp_path / "mine", {}, 0, script)


def test_a_save_that_fills_the_disk_keeps_the_previous_checkpoint_and_says_what_to_do(tmp_path):
    path = fake_checkpoint(tmp_path / "sft", value=1.0)
    (path / "checkpoint-5").mkdir()
    before = snapshot(path)
    with pytest.raises(errors.PipelineError) as caught:
        with checkpoints.staged_save(path) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "model.safetensors"))
    message = str(caught.value)
    assert f"saving to {path} failed (No space left on device" in message
    assert f"the previous checkpoint in {path} is intact" in message and "Free some space" in message
    assert f"resume from {path / 'checkpoint-5'}" in message
    assert snapshot(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


# What the benchmark's --work_dir/<shape> may hold before it builds its models there (replacing the folder whole).
WORK_DIR_CASES = {
    "a model (--work_dir checkpoint/base: the tiny base)": lambda folder: fake_checkpoint(folder),
    "a user's file": lambda folder: (folder.mkdir(), (folder / "notes.txt").write_text("mine")),
    "only one of the benchmark's models": lambda folder: fake_checkpoint(folder / "rm"),
}


@pytest.mark.parametrize("case", WORK_DIR_CASES)
def test_the_benchmark_refuses_a_work_dir_whose_shape_folder_holds_something_else(tmp_path, case):
    from benchmarks import ppo_throughput

    folder = tmp_path / "tiny"
    WORK_DIR_CASES[case](folder)
    before = snapshot(tmp_path)
    with pytest.raises(errors.ArgumentError, match="holds files that are not this benchmark's models"):
        ppo_throughput.build_models("tiny", folder, seed=0)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------------
# Every model the pipeline reads and every file the project owns


def fake_pipeline(folder):
    """The models of a whole run at their default folders under `folder`: the tiny base, SFT, the reward model and
    every policy's adapter."""
    fake_checkpoint(folder / paths.TINY_BASE_DIR)
    fake_checkpoint(folder / paths.SFT_DIR)
    fake_checkpoint(folder / paths.RM_DIR, "Qwen2ForSequenceClassification")
    for default, _, _ in paths.POLICIES.values():
        if default != paths.SFT_DIR:
            fake_adapter(folder / default)


# (the script, its --use_peft, the --output_dir, the run's inputs, the message): a model that another stage, the
# comparison, the export or the page reads, beyond the running script's own inputs.
PIPELINE_MODEL_CASES = {
    "export.py --method ppo_base --output_dir checkpoint/sft": (
        "export.py",
        None,
        paths.SFT_DIR,
        {"adapter_path": paths.PPO_BASE_DIR, "adapter_path's base": paths.TINY_BASE_DIR},
        "is the SFT model's folder checkpoint/sft: saving would replace the model that PPO, DPO and GRPO start from "
        "and their adapters apply to; only train_sft.py saves there. Pass another --output_dir.",
    ),
    "export.py --output_dir checkpoint/base/tiny": (
        "export.py",
        None,
        paths.TINY_BASE_DIR,
        {"adapter_path": paths.PPO_DIR, "adapter_path's base": paths.SFT_DIR},
        "is inside the base models' folder checkpoint/base: saving would replace a model that the stages and the "
        "critic start from",
    ),
    "train_sft.py --model_name_or_path elsewhere --output_dir checkpoint/base/tiny": (
        "train_sft.py",
        False,
        paths.TINY_BASE_DIR,
        {"model_name_or_path": "elsewhere"},
        "is inside the base models' folder checkpoint/base",
    ),
    "train_dpo.py --use_peft false --sft_model_path elsewhere --output_dir checkpoint/sft": (
        "train_dpo.py",
        False,
        paths.SFT_DIR,
        {"sft_model_path": "elsewhere"},
        "is the SFT model's folder checkpoint/sft",
    ),
    "train_dpo.py --use_peft false --output_dir checkpoint/ppo": (
        "train_dpo.py",
        False,
        paths.PPO_DIR,
        {"sft_model_path": paths.SFT_DIR},
        "is PPO's folder checkpoint/ppo: saving would replace the policy that compare.py, export.py and "
        "the page read; only train_ppo.py saves there.",
    ),
    "train_grpo.py --output_dir checkpoint/dpo": (
        "train_grpo.py",
        True,
        paths.DPO_DIR,
        {"sft_model_path": paths.SFT_DIR},
        "is DPO's folder checkpoint/dpo",
    ),
    "train_sft.py --output_dir checkpoint/rm": (
        "train_sft.py",
        False,
        paths.RM_DIR,
        {"model_name_or_path": paths.TINY_BASE_DIR},
        "is the reward model's folder checkpoint/rm: saving would replace the reward model that PPO and GRPO score "
        "with; only train_rm.py saves there.",
    ),
    "train_ppo.py --output_dir checkpoint": (
        "train_ppo.py",
        None,
        paths.CHECKPOINT_ROOT,
        {"sft_model_path": "elsewhere"},
        "holds the base models' folder checkpoint/base",
    ),
}


@pytest.mark.parametrize("case", PIPELINE_MODEL_CASES)
def test_no_script_saves_over_a_model_that_another_stage_reads(tmp_path, monkeypatch, case):
    """export.py --method ppo_base --output_dir checkpoint/sft replaced the SFT model under every adapter, exit 0."""
    script, use_peft, output_dir, inputs, message = PIPELINE_MODEL_CASES[case]
    monkeypatch.chdir(tmp_path)
    fake_pipeline(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(errors.ArgumentError, match=re.escape(f"--output_dir {output_dir} {message}")):
        outputs.check_output_dir(output_dir, inputs, 0, script, use_peft)
    assert snapshot(tmp_path) == before


# Every script's own default folders (PPO's two), holding the model it writes there: a rerun replaces it.
OWN_FOLDERS = [("train_sft.py", paths.SFT_DIR), ("train_rm.py", paths.RM_DIR)] + [
    (script, default) for default, script, _ in paths.POLICIES.values() if default != paths.SFT_DIR
]


@pytest.mark.parametrize("script, folder", OWN_FOLDERS, ids=[f"{s} {f}" for s, f in OWN_FOLDERS])
def test_a_script_may_save_over_its_own_default_folder(tmp_path, monkeypatch, script, folder):
    monkeypatch.chdir(tmp_path)
    fake_pipeline(tmp_path)
    outputs.check_output_dir(folder, {}, 0, script)


def tracked_files() -> list[str]:
    """The files git tracks under the project's root (none outside a git checkout)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=paths.ROOT, capture_output=True, text=True)
    except FileNotFoundError:  # no git
        return []
    return [name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else []


def test_every_file_the_project_tracks_is_refused_as_an_output():
    """eval_rm.py --metrics_file README.md replaced the README, exit 0: the guard knew the data folder alone."""
    tracked = tracked_files()
    if not tracked:
        pytest.skip("not a git checkout: git lists no file of the project")
    for name in tracked:
        for flag, verb in (("--metrics_file", "writing"), ("--output_dir", "saving")):
            with pytest.raises(errors.ArgumentError, match=f"^{flag} .* the (project's|pipeline's) .*{verb} would"):
                outputs.refuse_protected(paths.ROOT / name, flag, {}, verb)
    with pytest.raises(errors.ArgumentError, match="holds the (project's|pipeline's)"):  # the project's folder itself
        outputs.refuse_protected(paths.ROOT, "--output_dir", {}, "saving")


@pytest.mark.parametrize(
    "name", ["checkpoint/sft", "tensorboard/sft/run/sft.png", "qwen-rude", "metrics.json", "benchmarks/results/x.json"]
)
def test_the_projects_working_folders_and_new_names_beside_its_files_stay_writable(name):
    """Outputs go to checkpoint/ under the working folder, which may be the project's; docs/export.md exports into
    qwen-rude there, and benchmarks/gpu.sh writes into benchmarks/results."""
    outputs.refuse_protected(paths.ROOT / name, "--output_dir", {}, "saving")


# The stages' default folders: a dataset kept inside the one the run saves into (the save replaces the folder whole).
DATASET_IN_OUTPUT = {"train_sft.py": paths.SFT_DIR, "train_rm.py": paths.RM_DIR} | {
    script: default for default, script, flags in paths.POLICIES.values() if not flags and script != "train_sft.py"
}


@pytest.mark.parametrize("script", DATASET_IN_OUTPUT)
def test_a_stage_refuses_to_save_over_its_own_dataset_before_it_loads_anything(tmp_path, script):
    """train_sft.py --dataset_name checkpoint/sft/mydata.jsonl deleted the run's data with the old model, exit 0."""
    folder = DATASET_IN_OUTPUT[script]
    dataset = folder / "mydata.jsonl"
    (tmp_path / folder).mkdir(parents=True)
    shutil.copy(paths.SAMPLE_DATA, tmp_path / dataset)
    before = snapshot(tmp_path)
    result = run_main(script, "--tiny", "--dataset_name", dataset, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"--output_dir {folder} holds --dataset_name {dataset}, which this run reads" in result.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / paths.TINY_BASE_DIR).exists()  # nothing built


# ----------------------------------------------------------------------------------------------------------------
# Periodic checkpoints of another run


@pytest.mark.parametrize(
    "present, resume, prunes, refused",
    [
        (["checkpoint-15"], None, True, "checkpoint-15"),
        (["checkpoint-5", "checkpoint-15"], "checkpoint-5", True, "checkpoint-15"),
        (["checkpoint-5", "checkpoint-15"], "checkpoint-15", True, None),
        (["checkpoint-15"], None, False, None),
        ([], None, True, None),
    ],
    ids=["left by another run", "later than the resumed one", "resumed from the latest", "no pruning", "none"],
)
def test_another_runs_periodic_checkpoints_are_named_before_training(tmp_path, present, resume, prunes, refused):
    out = tmp_path / "out"
    out.mkdir()
    for name in present:
        (out / name).mkdir()
    resume = out / resume if resume else None
    if refused is None:
        outputs.check_periodic_checkpoints(out, resume, prunes)
    else:
        with pytest.raises(errors.ArgumentError, match=f"holds {refused}, saved by another run"):
            outputs.check_periodic_checkpoints(out, resume, prunes)
    assert sorted(p.name for p in out.iterdir()) == sorted(present)  # nothing pruned


def test_a_finished_runs_folder_is_named_as_finished_not_to_resume(tmp_path):
    """Rerunning a finished run into its own folder: its model was saved after its last periodic checkpoint, and
    resuming from that would redo the run's last updates. A model older than the checkpoints is an earlier run's,
    and the later run that left them is told to resume."""
    out = fake_checkpoint(tmp_path / "out")  # the final save
    (out / "checkpoint-15").mkdir()
    resuming.write_run_settings(out / "checkpoint-15", {})
    earlier = time.time() - 60  # the periodic save, before the final one
    os.utime(out / "checkpoint-15" / resuming.RUN_SETTINGS_FILE, (earlier, earlier))
    with pytest.raises(errors.ArgumentError) as refused:
        outputs.check_periodic_checkpoints(out, None, prunes=True)
    assert str(refused.value) == (
        f"--output_dir {out} holds a finished run: its model, saved after its last periodic checkpoint checkpoint-15. "
        "Training into it again would rank this run's periodic checkpoints below that one and delete them "
        "(--save_total_limit), and resuming from it would redo that run's last updates. Pass another --output_dir, "
        f"or move {out} away first."
    )
    later = time.time() + 60  # a later run, stopped after its checkpoint-15: resume it
    os.utime(out / "checkpoint-15" / resuming.RUN_SETTINGS_FILE, (later, later))
    with pytest.raises(errors.ArgumentError, match="holds checkpoint-15, saved by another run.* Resume that run"):
        outputs.check_periodic_checkpoints(out, None, prunes=True)


@pytest.mark.parametrize(
    "script, folder, flags",
    [
        ("train_sft.py", paths.SFT_DIR, ("--save_strategy", "steps", "--save_steps", 5, "--save_total_limit", 1)),
        ("train_rm.py", paths.RM_DIR, ("--save_strategy", "steps", "--save_steps", 5, "--save_total_limit", 1)),
        ("train_ppo.py", paths.PPO_DIR, ("--save_steps", 5)),  # its default --save_total_limit is 1
    ],
)
def test_a_stage_refuses_a_folder_with_another_runs_checkpoint_before_training(tmp_path, script, folder, flags):
    (tmp_path / folder / "checkpoint-15").mkdir(parents=True)
    result = run_main(script, "--tiny", *flags, cwd=tmp_path)
    assert result.returncode == 2 and "holds checkpoint-15, saved by another run" in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["checkpoint-15"]


# ----------------------------------------------------------------------------------------------------------------
# Flags honoured: --from_base --output_dir


@pytest.mark.parametrize(
    "flags, output_dir",
    [
        (("--from_base", "--output_dir", "checkpoint/ppo"), "checkpoint/ppo"),
        (("--from_base",), str(paths.PPO_BASE_DIR)),
        ((), str(paths.PPO_DIR)),
        (("--output_dir", "elsewhere"), "elsewhere"),
    ],
)
def test_ppo_writes_where_output_dir_says_and_from_base_only_changes_the_default(flags, output_dir):
    script_args, config = cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, ["--tiny", *flags])
    ppo_setup.check_arguments(script_args, config)
    assert config.output_dir == output_dir


def test_a_trainer_stage_without_tensorboard_charts_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "plot_scalars", lambda *args: tmp_path / "chart.png")
    assert charts.curves_note(tmp_path, ["train/loss"], "t", []) == ""
    assert charts.curves_note(tmp_path, ["train/loss"], "t", ["tensorboard"]) == f"; curves in {tmp_path}/chart.png"


@pytest.mark.parametrize("script, folder", [("train_sft.py", paths.SFT_DIR), ("train_rm.py", paths.RM_DIR)])
def test_a_stage_run_with_report_to_none_saves_and_exits_0(tmp_path, tiny_base, script, folder):
    shutil.copytree(tiny_base, tmp_path / paths.TINY_BASE_DIR)
    result = run_main(script, "--tiny", "--report_to", "none", "--num_train_epochs", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Model saved to {folder}. " in result.stdout and "curves in" not in result.stdout
    assert checkpoints.checkpoint_problem(tmp_path / folder) is None


# ----------------------------------------------------------------------------------------------------------------
# Hints never suggest overwriting a model of another kind


@pytest.mark.parametrize(
    "holds, default_holds, expected",
    [
        (None, None, "here"),
        ("Qwen2ForSequenceClassification", None, "here"),
        ("Qwen2ForCausalLM", None, None),
        ("adapter", None, None),
        ("Qwen2ForCausalLM", "Qwen2ForCausalLM", "default_2"),
    ],
    ids=["empty", "a reward model", "a language model", "an adapter", "and the default too"],
)
def test_a_reward_model_hint_never_names_a_folder_holding_another_kind(
    tmp_path, monkeypatch, holds, default_holds, expected
):
    monkeypatch.chdir(tmp_path)
    for folder, kind in (("here", holds), ("default", default_holds)):
        if kind == "adapter":
            fake_adapter(tmp_path / folder)
        elif kind:
            fake_checkpoint(tmp_path / folder, kind)
    assert hints.hint_output_dir("here", "default", hints.WRITES["train_rm.py"]) == expected


@pytest.mark.parametrize(
    "script, flags, kind, hint",
    [
        ("eval_rm.py", ("--model_path",), "Qwen2ForCausalLM", "train_rm.py --tiny"),
        ("eval_sft.py", ("--model_path",), "Qwen2ForSequenceClassification", "train_sft.py --tiny"),
        ("eval_ppo.py", ("--model_path",), "Qwen2ForCausalLM", "train_ppo.py --tiny"),
    ],
)
def test_the_printed_hint_run_as_printed_would_not_replace_the_wrong_model(tmp_path, script, flags, kind, hint):
    wrong = fake_checkpoint(tmp_path / "checkpoint" / "other", kind)
    before = snapshot(wrong)
    result = run_main(script, "--tiny", *flags, wrong, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert hint in result.stderr and f"--output_dir {wrong}" not in result.stderr
    assert snapshot(wrong) == before


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_a_policy_hint_keeps_a_folder_of_its_own_kind(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default folder, checkpoint/<name>, holds nothing
    default, script, _ = paths.POLICIES[name]
    (fake_checkpoint if hints.WRITES[script] == "language model" else fake_adapter)(tmp_path / "mine")
    assert f"--output_dir {tmp_path / 'mine'}" in hints.policy_command(name, tmp_path / "mine", tiny=True)
    fake_checkpoint(tmp_path / "rm", "Qwen2ForSequenceClassification")
    assert "--output_dir" not in hints.policy_command(name, tmp_path / "rm", tiny=True)
