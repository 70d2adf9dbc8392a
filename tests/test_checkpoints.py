"""Checkpoints and output folders: a save killed at any step leaves one complete checkpoint, a run refuses an output
folder it reads from, cannot write or shares with another run, a model folder must fit its role, a resumed run must
keep its settings, and the hints a run prints carry the user's flags."""

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import common
import compare
import eval_rm
import train_ppo
import train_rm
import train_sft
from conftest import run_main
from hfppo import checkpoints, cli, errors, hints, lifecycle, outputs, paths, resuming, training


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` or cleanup code of the save catches it."""


def fake_checkpoint(folder, version: int, architecture="Qwen2ForCausalLM", tensors=("lm_head.weight",)):
    """A checkpoint folder as require_checkpoint sees one: config, weights whose values say `version`, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)  # a save's staging folder is there already
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    save_file({name: torch.full((4,), float(version)) for name in tensors}, folder / "model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def version(folder) -> int:
    return int(load_file(checkpoints.require_checkpoint(folder, "x") / "model.safetensors")["lm_head.weight"][0])


def killed_at(operation: int, monkeypatch):
    """Make the `operation`-th file-system change from now on (rename, unlink, rmdir: the steps of a save, down to
    each file rmtree deletes) raise Killed instead of happening."""
    count = itertools.count()

    def killing(function):
        def step(*args, **kwargs):
            if next(count) == operation:
                raise Killed
            return function(*args, **kwargs)

        return step

    for name in ("rename", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, killing(getattr(os, name)))
    return count


def count_save_operations(tmp_path, monkeypatch) -> int:
    checkpoint = fake_checkpoint(tmp_path / "count" / "sft", 1)
    (checkpoint / "checkpoint-3").mkdir()
    with monkeypatch.context() as patch:
        count = killed_at(-1, patch)
        with checkpoints.staged_save(checkpoint) as staging:
            fake_checkpoint(staging, 2)
        return next(count)


def test_a_save_killed_at_any_step_leaves_one_complete_checkpoint(tmp_path, monkeypatch):
    steps = count_save_operations(tmp_path, monkeypatch)
    assert steps >= 5  # to .ready, the periodic checkpoint moved, old aside, new in, and the old one's files deleted
    outcomes = []
    for step in range(steps):
        checkpoint = fake_checkpoint(tmp_path / str(step) / "sft", 1)
        (checkpoint / "checkpoint-3").mkdir()
        with monkeypatch.context() as patch, pytest.raises(Killed):
            killed_at(step, patch)
            with checkpoints.staged_save(checkpoint) as staging:
                fake_checkpoint(staging, 2)
        loaded = version(checkpoint)  # settles the interrupted save, as every loader does
        outcomes.append(loaded)
        # Once the new checkpoint was complete (.ready, the first step), the loader rolls forward to it.
        assert loaded == (1 if step == 0 else 2), step
        assert (checkpoint / "checkpoint-3").is_dir(), step
        assert not any(
            checkpoints.sibling(checkpoint, suffix).exists() for suffix in (checkpoints.READY, checkpoints.OLD)
        ), step
        # and the next save works and cleans up
        with checkpoints.staged_save(checkpoint) as staging:
            fake_checkpoint(staging, 3)
        assert version(checkpoint) == 3 and (checkpoint / "checkpoint-3").is_dir()
        assert sorted(p.name for p in checkpoint.parent.iterdir() if p.name != ".sft.lock") == ["sft"]
    assert outcomes.count(1) == 1


def periodic_state(folder, settings: dict):
    """A checkpoint-<step> as a periodic save writes one: a model and the run's settings (written plainly, so that the
    file-system steps counted are the save's own)."""
    fake_checkpoint(folder, 1)
    (folder / resuming.RUN_SETTINGS_FILE).write_text(json.dumps(settings))


def count_periodic_save_operations(tmp_path, monkeypatch) -> int:
    with monkeypatch.context() as patch:
        count = killed_at(-1, patch)
        with checkpoints.staged_save(tmp_path / "count" / "ppo" / "checkpoint-4") as staging:
            periodic_state(staging, {})
        return next(count)


@pytest.mark.parametrize("ctrl_c", [True, False])
def test_a_run_killed_at_any_step_of_a_periodic_save_resumes_and_keeps_a_complete_state(
    tmp_path, monkeypatch, capsys, ctrl_c
):
    """A kill during the save of checkpoint-4, with checkpoint-2 saved: the run's line after a Ctrl-C names the last
    complete state (checkpoint-4 once it was written whole, half-swapped or not), and the checks a run makes before
    training pass for its resume command; after a kill with no line, the next run's checks put checkpoint-4 in place
    all the same. Nothing of the save's staging is left."""
    settings = {"learning_rate": 0.1}
    steps = count_periodic_save_operations(tmp_path, monkeypatch)
    assert steps >= 3  # the partial folder to ready, the ready one into place, its marker deleted
    monkeypatch.setattr(sys, "argv", ["train_ppo.py", "--tiny", "--save_steps", "2"])
    for step in range(steps):
        output = tmp_path / str(step) / "ppo"
        monkeypatch.setattr(lifecycle, "_RUN", {"output_dir": output, "start": 0.0, "existed": False})
        with checkpoints.staged_save(output / "checkpoint-2") as staging:
            periodic_state(staging, settings)
        with monkeypatch.context() as patch, pytest.raises(Killed):
            killed_at(step, patch)
            with checkpoints.staged_save(output / "checkpoint-4") as staging:
                periodic_state(staging, settings)
        last = output / ("checkpoint-2" if step == 0 else "checkpoint-4")  # complete from the first step on
        if ctrl_c:
            line = f"the last periodic checkpoint, {last}, resumes it: {lifecycle.resume_command(last)}"
            assert lifecycle.interrupted_run() == line, step
        outputs.check_output_dir(output, {})
        assert checkpoints.periodic_steps(output)[-1] == last, step
        outputs.check_periodic_checkpoints(output, last, prunes=True)
        resuming.check_resume(last, settings)
        assert sorted(p.name for p in output.iterdir()) == ["checkpoint-2", "checkpoint-4"][: 1 + (step > 0)], step
        assert (last / resuming.RUN_SETTINGS_FILE).is_file() and not (last / checkpoints.STAGING_MARKER).exists()


# What a kill leaves of a Trainer stage's periodic save of checkpoint-10 (written in place), after checkpoint-5:
# whether the next run's checks delete it, and with which files.
TRAINER_LEFTOVERS = {
    "killed while the Trainer wrote it": ({checkpoints.SAVING_MARKER, "model.safetensors"}, False),
    "killed after its last file, before its marker went": (
        {checkpoints.SAVING_MARKER, "model.safetensors", resuming.RUN_SETTINGS_FILE}, True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", TRAINER_LEFTOVERS)
def test_a_trainer_stage_killed_during_a_periodic_save_resumes_from_its_last_complete_checkpoint(tmp_path, case):
    """With --save_total_limit a later checkpoint-<step> stops a resume as another run's: one the kill left
    incomplete is deleted first (it holds the save's marker and not its last file), a complete one kept."""
    files, complete = TRAINER_LEFTOVERS[case]
    output = tmp_path / "sft"
    last = periodic_state_folder(output / "checkpoint-5")
    cut = output / "checkpoint-10"
    checkpoints.mark_saving(cut)
    for name in files - {checkpoints.SAVING_MARKER}:
        (cut / name).write_text("{}")
    outputs.check_output_dir(output, {})
    if complete:
        assert sorted(p.name for p in cut.iterdir()) == sorted(files - {checkpoints.SAVING_MARKER})
        return
    assert not cut.exists()
    outputs.check_periodic_checkpoints(output, last, prunes=True)
    resuming.check_resume(last, {})


def test_a_trainer_stages_periodic_save_is_marked_until_its_last_file(tmp_path):
    """The marker goes into checkpoint-<step> when the Trainer decides to save (before it writes there), and out
    with the run's settings, the save's last file; a step that saves nothing marks nothing."""
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=5, is_world_process_zero=True)
    training.MarkPeriodicSaves().on_step_end(args, SimpleNamespace(global_step=4), SimpleNamespace(should_save=False))
    training.MarkPeriodicSaves().on_step_end(args, state, SimpleNamespace(should_save=True))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]
    assert checkpoints.saving_cut_short(tmp_path / "checkpoint-5")
    training.SaveRunSettings({"seed": 1}).on_save(args, state, SimpleNamespace())
    assert sorted(p.name for p in (tmp_path / "checkpoint-5").iterdir()) == [resuming.RUN_SETTINGS_FILE]


def test_resuming_from_a_periodic_checkpoint_left_half_swapped_puts_it_in_place(tmp_path):
    checkpoint = tmp_path / "ppo" / "checkpoint-4"
    ready = checkpoints.sibling(checkpoint, checkpoints.READY)
    periodic_state(ready, {"seed": 1})
    checkpoints.mark_staging(ready, checkpoint)
    resuming.check_resume(checkpoint, {"seed": 1})
    assert not ready.exists() and sorted(p.name for p in checkpoint.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer_config.json", resuming.RUN_SETTINGS_FILE]
    )


def test_a_users_checkpoint_folder_without_the_saves_marker_is_never_deleted(tmp_path):
    output = tmp_path / "sft"
    last = periodic_state_folder(output / "checkpoint-5")
    users = fake_checkpoint(output / "checkpoint-10", 1)  # no run settings: not this pipeline's periodic save
    before = files_under(tmp_path)
    outputs.check_output_dir(output, {})
    assert files_under(tmp_path) == before
    with pytest.raises(errors.ArgumentError, match=f"--output_dir {output} holds checkpoint-10"):
        outputs.check_periodic_checkpoints(output, last, prunes=True)
    assert users.is_dir()


def periodic_state_folder(folder):
    periodic_state(folder, {})
    return folder


def test_a_save_killed_while_writing_keeps_the_previous_checkpoint_and_a_first_save_looks_absent(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "rm", 1)
    with pytest.raises(Killed), checkpoints.staged_save(checkpoint) as staging:
        (staging / "config.json").write_text("{}")  # a marker, but the weights never came
        raise Killed
    assert version(checkpoint) == 1
    with pytest.raises(Killed), checkpoints.staged_save(tmp_path / "new") as staging:
        fake_checkpoint(staging, 1)
        raise Killed
    left = r"no model at .*new \(.*\.new\.hfppo-partial is left from a save that was"
    with pytest.raises(errors.PipelineError, match=left):
        checkpoints.require_checkpoint(tmp_path / "new", "python train_rm.py --tiny --output_dir new")


def files_under(folder) -> dict:
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A user's folders beside a model, named as the staged save's folders were named before (sft.old, sft.ready,
# sft.partial) or as they are now but without the save's marker: a backup, a copy, another model.
USERS_FOLDERS = ["sft.old", "sft.ready", "sft.partial", *(f".sft{suffix}" for suffix in checkpoints.STAGING)]


@pytest.mark.parametrize("name", USERS_FOLDERS)
def test_loading_a_model_never_moves_or_deletes_a_users_folder_named_like_a_staging_folder(tmp_path, name):
    """The reported cases: `cp -a checkpoint/sft checkpoint/sft.old` then loading the model deleted the backup, and a
    user's checkpoint/dpo.ready replaced the DPO adapter on export."""
    checkpoint = fake_checkpoint(tmp_path / "sft", 1)
    fake_checkpoint(tmp_path / name, 2)
    before = files_under(tmp_path)
    assert version(checkpoint) == 1
    checkpoints.finish_interrupted_saves(checkpoint)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("suffix", checkpoints.STAGING)
def test_a_staging_name_holding_a_users_folder_stops_the_save_and_the_guard(tmp_path, suffix):
    """A folder under the save's staging name without its marker is not the save's: the save and the output guard
    refuse to start, naming it, and it stays as it was."""
    checkpoint = fake_checkpoint(tmp_path / "sft", 1)
    users = fake_checkpoint(checkpoints.sibling(checkpoint, suffix), 2)
    before = files_under(tmp_path)
    message = f"{users} is in the way: the save into {checkpoint} uses that staging name"
    with pytest.raises(errors.ArgumentError, match=re.escape(message)):
        outputs.check_output_dir(checkpoint, {})
    with pytest.raises(errors.PipelineError, match=re.escape(message)):
        with checkpoints.staged_save(checkpoint) as staging:
            fake_checkpoint(staging, 3)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no weights", "has a config.json but no weights file"),
        ("no tokenizer", "but no tokenizer file"),
        ("truncated weights", "has a damaged model.safetensors"),
    ],
)
def test_an_incomplete_or_damaged_checkpoint_is_named_with_the_command_that_writes_it(tmp_path, damage, message):
    checkpoint = fake_checkpoint(tmp_path / "sft", 1)
    weights = checkpoint / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    elif damage == "no tokenizer":
        (checkpoint / "tokenizer_config.json").unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-8])
    command = "python train_sft.py --tiny --output_dir /tmp/v"
    with pytest.raises(errors.PipelineError) as error:
        checkpoints.require_checkpoint(checkpoint, command)
    assert message in str(error.value) and command in str(error.value)


# ----------------------------------------------------------------------------------------------------------------
# A model folder must fit its role


ROLE_CASES = {
    "language model as reward model": ("Qwen2ForCausalLM", ("lm_head.weight",), "reward model", "not a reward model"),
    "classifier without a trained head": (
        "Qwen2ForSequenceClassification", ("lm_head.weight",), "reward model", "no trained score head",
    ),
    "reward model as policy": (
        "Qwen2ForSequenceClassification", ("score.weight",), "language model", "not a language model",
    ),
    "whole model as adapter": ("Qwen2ForCausalLM", ("lm_head.weight",), "adapter", "is a whole model"),
}  # fmt: skip


@pytest.mark.parametrize("case", ROLE_CASES)
def test_a_model_of_the_wrong_kind_is_refused_naming_role_folder_and_command(tmp_path, case):
    architecture, tensors, role, message = ROLE_CASES[case]
    folder = fake_checkpoint(tmp_path / "model", 1, architecture, tensors)
    with pytest.raises(errors.PipelineError) as error:
        checkpoints.require_checkpoint(folder, "python train_rm.py --tiny", role)
    assert all(part in str(error.value) for part in (message, str(folder), "python train_rm.py --tiny"))


def test_an_adapter_is_refused_as_a_whole_model_and_the_right_kinds_pass(tmp_path):
    adapter = tmp_path / "ppo"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    save_file({"lora_A": torch.zeros(2)}, adapter / "adapter_model.safetensors")
    (adapter / "tokenizer_config.json").write_text("{}")
    with pytest.raises(errors.PipelineError, match="is a LoRA adapter"):
        checkpoints.require_checkpoint(adapter, "x", "language model")
    checkpoints.require_checkpoint(adapter, "x", "adapter")
    rm = fake_checkpoint(tmp_path / "rm", 1, "Qwen2ForSequenceClassification", ("score.weight",))
    checkpoints.require_checkpoint(rm, "x", "reward model")
    checkpoints.require_checkpoint(rm, "x", "critic")  # the critic may start from the reward model
    checkpoints.require_checkpoint(fake_checkpoint(tmp_path / "sft", 1), "x", "critic")


# ----------------------------------------------------------------------------------------------------------------
# A config.json must describe its weights, and the weights must be numbers


def small_model(folder, tie: bool = True, **config):
    """A Qwen2 language model of one small layer, saved as a checkpoint (its tokenizer a stand-in), with `config`'s
    entries then written over its config.json."""
    model_config = AutoConfig.for_model(
        "qwen2", vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tie, architectures=["Qwen2ForCausalLM"],
    )  # fmt: skip
    AutoModelForCausalLM.from_config(model_config).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}")
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(saved | config))
    return folder


def drop_weight(folder, name: str) -> None:
    weights = load_file(folder / "model.safetensors")
    del weights[name]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


CONFIG_CASES = {
    # Llama has no q/k/v biases: loaded as one, Qwen2's would be dropped
    "Llama's config over Qwen2's weights": (
        dict(model_type="llama", architectures=["LlamaForCausalLM"]), None,
        "hold 3 it has no place for (model.layers.0.self_attn.k_proj.bias, model.layers.0.self_attn.q_proj.bias, "
        "model.layers.0.self_attn.v_proj.bias)",
    ),
    "a weight missing": (
        {}, "model.layers.0.mlp.down_proj.weight", "lack 1 that model needs (model.layers.0.mlp.down_proj.weight)"
    ),
    # saved with the head tied to the embeddings (no lm_head.weight), read untied: the head would be random
    "untied config over tied weights": (dict(tie_word_embeddings=False), None, "lack 1 that model needs (lm_head"),
}  # fmt: skip


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_config_that_does_not_describe_its_weights_is_refused_naming_them(tmp_path, case):
    config, dropped, message = CONFIG_CASES[case]
    folder = small_model(tmp_path / "sft", **config)
    if dropped:
        drop_weight(folder, dropped)
    with pytest.raises(errors.PipelineError) as error:
        checkpoints.require_checkpoint(folder, "python train_sft.py --tiny")
    assert all(part in str(error.value) for part in (message, str(folder), "config.json", "python train_sft.py"))


def test_a_config_that_describes_its_weights_passes_with_the_known_differences(tmp_path):
    checkpoints.require_checkpoint(small_model(tmp_path / "tied"), "x", "language model")  # no lm_head.weight saved
    checkpoints.require_checkpoint(small_model(tmp_path / "untied", tie=False), "x", "language model")
    # a critic made from a language model: its score head new, the language model's head unused
    critic = small_model(tmp_path / "critic", tie=False, architectures=["Qwen2ForSequenceClassification"])
    checkpoints.require_checkpoint(critic, "x", "critic")


def test_an_adapter_whose_weights_are_not_numbers_is_refused_naming_the_first(tmp_path):
    adapter = tmp_path / "ppo"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "tokenizer_config.json").write_text("{}")
    weights = {"a.lora_A.weight": torch.zeros(2), "b.lora_B.weight": torch.tensor([0.0, float("nan")])}
    save_file(weights, adapter / checkpoints.ADAPTER_WEIGHTS)
    with pytest.raises(errors.PipelineError) as error:
        checkpoints.require_checkpoint(adapter, "python train_ppo.py --tiny", "adapter")
    assert all(part in str(error.value) for part in ("b.lora_B.weight", str(adapter), "python train_ppo.py --tiny"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_whose_weights_are_not_numbers_is_refused_at_load_naming_the_first(tiny_base, tmp_path, value):
    folder = tmp_path / "sft"
    shutil.copytree(tiny_base, folder)
    weights = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    weights[name].view(-1)[5] = value
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(errors.PipelineError) as error:
        common.load_model(AutoModelForCausalLM, folder, "python train_sft.py --tiny")
    assert all(part in str(error.value) for part in (f"first in {name}", str(folder), "python train_sft.py --tiny"))


def test_ppo_refuses_the_sft_model_as_reward_model_before_training(sft_run, tiny_base, tmp_path):
    sft = sft_run / paths.SFT_DIR
    result = run_main(
        "train_ppo.py", "--tiny", "--sft_model_path", sft, "--value_model_path", tiny_base,
        "--reward_model_path", sft, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{sft} is a Qwen2ForCausalLM model, not a reward model" in result.stderr
    assert "python train_rm.py --tiny" in result.stderr
    assert not (tmp_path / paths.PPO_DIR).exists()
    result = run_main("eval_rm.py", "--model_path", sft, cwd=tmp_path)
    assert result.returncode == 1 and "not a reward model" in result.stderr
    assert not (sft / "eval_metrics.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# The output folder: not an input, writable, one run at a time


@pytest.mark.parametrize("relation", ["is", "holds", "is inside"])
def test_an_output_folder_that_overlaps_an_input_is_refused(tmp_path, relation):
    model = fake_checkpoint(tmp_path / "models" / "sft", 1)
    output = {"is": model, "holds": model.parent, "is inside": model / "ppo"}[relation]
    with pytest.raises(errors.ArgumentError, match=f"--output_dir {output} {relation} --sft_model_path {model}"):
        outputs.check_output_dir(output, {"sft_model_path": model})
    assert version(model) == 1 and not (model / "ppo").exists()


def test_ppo_writing_over_its_sft_model_is_refused_and_the_model_kept(sft_run, tmp_path):
    """The reported case: exit 0, 'Adapter saved', and the SFT folder's config.json gone."""
    sft = tmp_path / "v"
    shutil.copytree(sft_run / paths.SFT_DIR, sft)
    before = sorted(p.name for p in sft.iterdir())
    result = run_main("train_ppo.py", "--tiny", "--sft_model_path", sft, "--output_dir", sft, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output_dir {sft} is --sft_model_path {sft}" in result.stderr
    assert sorted(p.name for p in sft.iterdir()) == before


def test_an_output_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(errors.ArgumentError, match=r"holds files that are not a checkpoint \(notes.txt\)"):
        outputs.check_output_dir(tmp_path, {})
    fake_checkpoint(tmp_path / "out", 1)
    (tmp_path / "out" / "checkpoint-5").mkdir()
    outputs.check_output_dir(tmp_path / "out", {})  # a checkpoint to overwrite is fine


def test_an_output_folder_that_cannot_be_written_or_has_no_room_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.PipelineError, match="cannot write beside --output_dir"):
        outputs.check_output_dir(tmp_path / "file" / "sft", {})
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
    with pytest.raises(errors.PipelineError, match="0.0 GiB free, and saving this run needs about 1.0 GiB"):
        outputs.check_output_dir(tmp_path / "sft", {}, needed_bytes=2**30)
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the checks wrote nothing


def test_a_second_run_on_the_same_output_folder_is_told_which_process_holds_it(tmp_path):
    output = tmp_path / "sft"
    hold = "import sys, time; from hfppo import lifecycle; lifecycle.lock_output_dir(sys.argv[1]); "
    hold += "print('ok', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(output)], cwd=paths.ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(errors.PipelineError, match=f"in use by another run \\(pid {holder.pid}: "):
            lifecycle.lock_output_dir(output)
    finally:
        holder.kill()
        holder.wait()
    lifecycle.lock_output_dir(output)  # the lock went with the process that held it


# ----------------------------------------------------------------------------------------------------------------
# Resuming keeps the run's settings


def test_settings_that_change_a_run_are_compared_and_harmless_ones_are_not(tmp_path):
    args = cli.parse_args(train_sft.make_parser(), train_sft.TINY_PRESET, ["--tiny"])
    settings = resuming.run_settings(*args)
    assert {"seed", "learning_rate", "num_train_epochs", "dataset_name", "sft_fraction"} <= settings.keys()
    assert not {"output_dir", "logging_steps", "save_steps", "resume_from_checkpoint"} & settings.keys()
    resuming.write_run_settings(tmp_path, settings)
    resuming.check_resume(tmp_path, settings)
    other = cli.parse_args(train_sft.make_parser(), train_sft.TINY_PRESET, ["--tiny", "--seed", "7"])
    with pytest.raises(errors.PipelineError, match=r"other settings \(--seed 42 now 7\)"):
        resuming.check_resume(tmp_path, resuming.run_settings(*other))
    with pytest.raises(errors.PipelineError, match="holds no run_settings.json"):
        resuming.check_resume(tmp_path / "elsewhere", settings)


@pytest.mark.parametrize(
    "flags",
    [("--hacking_length_drop", "0.5"), ("--hacking_length_drop", "1", "--num_eval_questions", "8")],
    ids=["the alarm's threshold", "and how many questions each evaluation answers"],
)
def test_a_resumed_ppo_run_may_change_what_it_only_reports(tmp_path, flags):
    """The reward-hacking alarm's threshold changes neither data nor optimisation: a resume with another one is
    accepted, also from a checkpoint saved when it was compared (its run_settings.json holds it)."""
    saved = resuming.run_settings(*cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, ["--tiny"]))
    now = resuming.run_settings(*cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, ["--tiny", *flags]))
    assert "hacking_length_drop" not in saved and "seed" in saved
    resuming.write_run_settings(tmp_path, saved | {"hacking_length_drop": 0.3})  # as saved before
    resuming.check_resume(tmp_path, now)
    other = cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, ["--tiny", *flags, "--kl_coef", "0.1"])
    with pytest.raises(errors.PipelineError, match=r"other settings \(--kl_coef 0.05 now 0.1\)"):
        resuming.check_resume(tmp_path, resuming.run_settings(*other))


def test_sft_resumes_with_its_own_settings_and_refuses_others(tiny_base, tmp_path):
    base = ("--tiny", "--model_name_or_path", tiny_base, "--max_steps", 6, "--save_strategy", "steps")
    result = run_main("train_sft.py", *base, "--save_steps", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / paths.SFT_DIR / "checkpoint-3"
    assert json.loads((checkpoint / resuming.RUN_SETTINGS_FILE).read_text())["max_steps"] == 6
    assert not (checkpoint / checkpoints.SAVING_MARKER).exists()  # complete: its marker went with its last file
    refused = run_main(
        "train_sft.py", *base, "--resume_from_checkpoint", checkpoint, "--learning_rate", 1e-4, cwd=tmp_path
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--learning_rate 0.001 now 0.0001" in refused.stderr
    resumed = run_main("train_sft.py", *base, "--resume_from_checkpoint", checkpoint, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    checkpoints.require_checkpoint(tmp_path / paths.SFT_DIR, "x", "language model")


# ----------------------------------------------------------------------------------------------------------------
# Hints carry the user's flags


def hinted_args(script, hint: str) -> list:
    words = shlex.split(hint)
    assert words[:2] == ["python", f"{script.__name__}.py"]
    return cli.parse_args(script.make_parser(), getattr(script, "TINY_PRESET", {}), words[2:])


def test_hints_name_the_users_folders_and_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the repository's .venv, which a hint would name
    hint = hints.command(
        "compare.py", True, model_path=hints.unless_default("/tmp/my ppo", paths.PPO_DIR),
        sft_model_path=hints.unless_default(paths.SFT_DIR, paths.SFT_DIR),
    )  # fmt: skip
    assert hint == "python compare.py --tiny --model_path '/tmp/my ppo'"
    (args,) = hinted_args(compare, hint)
    assert (args.tiny, args.ppo_model_path, args.sft_model_path) == (True, "/tmp/my ppo", "checkpoint/sft")
    (args,) = hinted_args(eval_rm, hints.command("eval_rm.py", False, model_path="/x"))
    assert args.model_path == "/x" and not args.tiny
    script_args, training_args, _ = hinted_args(train_rm, hints.command("train_rm.py", True, output_dir="/tmp/rm"))
    assert script_args.tiny and training_args.output_dir == "/tmp/rm"


def test_hints_name_the_environment_they_ran_in(tmp_path, monkeypatch):
    """make demo runs .venv/bin/python: its hints must work without activating .venv."""
    monkeypatch.chdir(tmp_path)
    assert hints.command("eval_sft.py", True).startswith("python eval_sft.py")  # pytest's interpreter is elsewhere
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert hints.command("eval_sft.py", True) == ".venv/bin/python eval_sft.py --tiny"


def test_eval_without_a_checkpoint_names_the_users_folder_in_the_command(tmp_path):
    result = run_main("eval_sft.py", "--tiny", "--model_path", tmp_path / "mine", "--question", "x", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"python train_sft.py --tiny --output_dir {tmp_path / 'mine'}" in result.stderr


def test_train_ppo_prints_a_compare_command_with_its_flags(ppo_run):
    printed = (ppo_run / "train.out").read_text()
    hint = printed.split("Compare it with every other method: ")[1].strip()
    (args,) = hinted_args(compare, hint)
    assert args.tiny
    # the fixture trained on its own SFT and reward models, and the hint names them
    assert (ppo_run / "train.out").read_text().count(args.sft_model_path) >= 1
    assert args.sft_model_path.endswith(str(paths.SFT_DIR)) and args.sft_model_path != str(paths.SFT_DIR)
    assert args.reward_model_path.endswith(str(paths.RM_DIR)) and args.reward_model_path != str(paths.RM_DIR)
