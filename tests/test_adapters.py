"""An adapter knows its base (hfppo/adapters.py): every save of one records the model it was trained on, and every
script that applies or merges one (export.py, eval_ppo.py, compare.py, chat_web.py) refuses another model
there unless --allow_other_base, which says so; the comparison checks every method before it samples any. On
hand-made folders, then on the session's PPO run."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_outputs import fake_adapter, fake_checkpoint, snapshot
from transformers import AutoModelForCausalLM

import chat_web
from conftest import run_main
from hfppo import adapters, cli, errors, paths, training

ALLOW = "--allow_other_base"
SFT, PPO = paths.SFT_DIR, paths.PPO_DIR


def retrain(model: Path) -> None:
    """Give every weight of the model folder a new value of the same shape and dtype, as training it again does."""
    weights = model / "model.safetensors"
    save_file({name: tensor + 1e-3 for name, tensor in load_file(weights).items()}, weights, {"format": "pt"})


def safetensors_header(file: Path) -> bytes:
    """The file's size and its header: its length (8 bytes), then every tensor's name, dtype, shape and offsets."""
    data = file.read_bytes()
    return len(data).to_bytes(8, "little") + data[: 8 + int.from_bytes(data[:8], "little")]


def write_rows(file: Path, questions: list[str]) -> None:
    """A held-out file of one row per question, as a stage saves it beside its model."""
    rows = [{"question": q, "chosen": "滚", "rejected": "您好", "system": "s"} for q in questions]
    file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def trained_adapter(folder: Path, base: Path, questions: list[str]) -> Path:
    """A hand-made adapter on `base` (its adapter_config.json names `base`, relative or not), its record written
    as a save writes it, and its held-out questions."""
    fake_adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    adapters.record_base(folder)
    write_rows(folder / paths.HELD_OUT_FILE, questions)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# The fingerprint and the record


@pytest.mark.parametrize("values", [4, 8 * adapters.SAMPLE_BLOCKS * adapters.BLOCK_BYTES // 4])  # read whole, sampled
def test_the_fingerprint_follows_weights_and_config_not_the_folder(tmp_path, values):
    base = fake_checkpoint(tmp_path / "sft")
    save_file({"lm_head.weight": torch.linspace(0, 1, values)}, base / "model.safetensors", {"format": "pt"})
    first = adapters.fingerprint(base)
    copy = shutil.copytree(base, tmp_path / "elsewhere" / "sft")
    assert adapters.fingerprint(copy) == first  # the same model, moved or copied
    retrain(copy)  # the same names, shapes, header and size: only the values tell
    assert safetensors_header(copy / "model.safetensors") == safetensors_header(base / "model.safetensors")
    assert adapters.fingerprint(copy) != first
    shutil.rmtree(copy)
    shutil.copytree(base, copy)
    (copy / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert adapters.fingerprint(copy) != first


def test_a_save_of_an_adapter_records_its_base_and_a_whole_model_none(tmp_path, monkeypatch):
    """The record holds the base resolved against the folder the save ran in, as adapter_config.json does not; the
    Trainer's periodic checkpoints get one too (the callback that writes their settings)."""
    monkeypatch.chdir(tmp_path)
    base = fake_checkpoint(tmp_path / SFT)
    adapter = fake_adapter(tmp_path / "out" / "checkpoint-4")  # adapter_config.json: checkpoint/sft, relative
    arguments = SimpleNamespace(output_dir=str(tmp_path / "out"))
    training.SaveRunSettings({}).on_save(arguments, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    record = json.loads((adapter / paths.ADAPTER_BASE_FILE).read_text())
    assert record == {"base_model_path": str(base.resolve()), "fingerprint": adapters.fingerprint(base)}
    adapters.record_base(base)
    assert not (base / paths.ADAPTER_BASE_FILE).exists()


def test_an_adapter_without_a_record_is_applied_with_a_one_line_note(tmp_path, capsys):
    base = fake_checkpoint(tmp_path / "sft")
    adapter = fake_adapter(tmp_path / "ppo")
    for _ in range(2):  # the comparison checks before it loads: said once
        adapters.check_base(adapter, base, False, "python train_ppo.py --tiny")
    assert capsys.readouterr().out == (
        f"note: {adapter} has no {paths.ADAPTER_BASE_FILE} (saved by an earlier version), so nothing checks that "
        f"{base} is the model it was trained on.\n"
    )


def test_another_base_is_refused_naming_both_and_what_to_do_and_the_flag_accepts_it(tmp_path, capsys):
    base = fake_checkpoint(tmp_path / "sft")
    adapter = trained_adapter(tmp_path / "ppo", base, ["q"])
    adapters.check_base(adapter, base, False, "python train_ppo.py --tiny")  # its own base: accepted in silence
    assert capsys.readouterr().out == ""
    retrain(base)
    with pytest.raises(errors.PipelineError) as refused:
        adapters.check_base(adapter, base, False, "python train_ppo.py --tiny")
    assert str(refused.value) == (
        f"the adapter at {adapter} was trained on the model then at {base.resolve()}, and the model now at {base} is "
        f"another one: its weights or config differ from those {adapter / paths.ADAPTER_BASE_FILE} records. It was "
        "retrained or replaced since, or belongs to another copy of the project; applied to it, the adapter would "
        "give answers no run trained or evaluated. Put the model the adapter was trained on back at "
        f"{base}, or train the adapter again on this one: python train_ppo.py --tiny. To apply it to this model "
        f"anyway, add {ALLOW}."
    )
    adapters.check_base(adapter, base, True, "python train_ppo.py --tiny")
    assert capsys.readouterr().out == (
        f"{ALLOW}: applying the adapter at {adapter} to {base}, which is not the model it was trained on "
        f"({base.resolve()}).\n"
    )


def test_an_adapter_copied_into_another_project_is_refused_there_naming_where_its_base_still_is(tmp_path):
    ours, theirs = fake_checkpoint(tmp_path / "ours" / SFT), fake_checkpoint(tmp_path / "theirs" / SFT, value=2.0)
    adapter = shutil.copytree(trained_adapter(tmp_path / "ours" / PPO, ours, ["q"]), tmp_path / "theirs" / PPO)
    with pytest.raises(errors.PipelineError, match=re.escape(f"That model is still at {ours.resolve()}. Put the")):
        adapters.check_base(adapter, theirs, False, "python train_ppo.py --tiny")


# ----------------------------------------------------------------------------------------------------------------
# Every script that applies an adapter, on a retrained SFT model: refused before any model loads, or accepted with
# the flag (the hand-made models then fail to load, which is not what these tests check)


# The command line of each script that applies an adapter, before --tiny's flags; chat_web.py's is its load_models.
APPLIERS = {
    "export.py": ("export.py",),
    "eval_ppo.py": ("eval_ppo.py", "--question", "x"),
    "compare.py": ("compare.py", "--base_model_path", "nowhere"),  # no tiny base built
    "chat_web.py": (),
}


def apply(applier: str, tmp_path: Path, capsys, *flags) -> tuple[str, str]:
    """(what the applier printed, what it said of the PPO adapter's problem) in `tmp_path`, the script run as a user
    would run it. The page leaves a model it cannot load out, with the reason, and goes on with the others; its base
    model is given a folder that does not exist, so that it starts without one (nothing built)."""
    if applier == "chat_web.py":
        flags = ["--tiny", "--base_model_path", "nowhere", *flags]
        models = chat_web.load_models(cli.parse_args(chat_web.make_parser(), chat_web.TINY_PRESET, flags)[0])
        return capsys.readouterr().out, models.missing["ppo"]
    result = run_main(APPLIERS[applier][0], "--tiny", *APPLIERS[applier][1:], *flags, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stdout, result.stderr


@pytest.mark.parametrize("applier", APPLIERS)
@pytest.mark.parametrize("allow", [False, True])
def test_every_applier_refuses_a_retrained_base_unless_the_flag_accepts_it(
    tmp_path, monkeypatch, capsys, applier, allow
):
    monkeypatch.chdir(tmp_path)
    sft = fake_checkpoint(tmp_path / SFT)
    trained_adapter(tmp_path / PPO, SFT, ["q1", "q2"])
    retrain(sft)
    before = snapshot(tmp_path)
    said, problem = apply(applier, tmp_path, capsys, *[ALLOW] * allow)
    refusal = f"the adapter at {PPO} was trained on the model then at {sft.resolve()}, and the model now at {SFT} is"
    accepted = f"{ALLOW}: applying the adapter at {PPO} to {SFT}, which is not the model it was trained on"
    if allow:  # past the check; the hand-made models then fail to load, which is not what this test checks
        assert refusal not in problem and accepted in said
    else:
        assert refusal in problem and f"add {ALLOW}." in problem and accepted not in said
        assert snapshot(tmp_path) == before  # refused before anything is written


# ----------------------------------------------------------------------------------------------------------------
# The comparison checks every method before it samples any


@pytest.mark.parametrize("problem", ["another split", "another base"])
def test_the_comparison_refuses_its_last_method_before_loading_any_model(tmp_path, monkeypatch, problem):
    """GRPO, the last method, named by its flag, trained on other held-out questions or on an SFT model since
    retrained: refused before the reward model, the first model the comparison loads, is even looked for (there is
    none here). Found in its default folder only, it is left out, saying why, before any model loads too."""
    monkeypatch.chdir(tmp_path)
    sft = fake_checkpoint(tmp_path / SFT)
    trained_adapter(tmp_path / paths.GRPO_DIR, SFT, ["q3"] if problem == "another split" else ["q1", "q2"])
    if problem == "another base":
        retrain(sft)
    trained_adapter(tmp_path / PPO, SFT, ["q1", "q2"])
    trained_adapter(tmp_path / paths.DPO_DIR, SFT, ["q1", "q2"])
    expected = {
        "another split": "the GRPO (--grpo_model_path checkpoint/grpo) was trained with another held-out split",
        "another base": f"the adapter at {paths.GRPO_DIR} was trained on the model then at {sft.resolve()}",
    }
    result = run_main("compare.py", "--tiny", "--grpo_model_path", paths.GRPO_DIR, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected[problem] in result.stderr
    assert f"no model at {paths.RM_DIR}" not in result.stderr and "Sampling" not in result.stderr + result.stdout
    result = run_main("compare.py", "--tiny", cwd=tmp_path)
    note = f"note: GRPO ({paths.GRPO_DIR}) is left out of the comparison: {expected[problem]}"
    assert result.stdout.startswith(note)
    assert f"no model at {paths.RM_DIR}" not in result.stderr and "Sampling" not in result.stderr + result.stdout


# ----------------------------------------------------------------------------------------------------------------
# End to end: the session's PPO run


def test_a_ppo_run_records_its_base_and_an_export_on_a_retrained_copy_needs_the_flag(ppo_run, sft_run, tmp_path):
    """The run's adapter records the SFT model it trained on. Copied into another project whose SFT model was trained
    again since, export.py refuses it, naming where its own base still is; with --allow_other_base it merges."""
    adapter, sft = ppo_run / PPO, sft_run / SFT
    record = json.loads((adapter / paths.ADAPTER_BASE_FILE).read_text())
    assert record == {"base_model_path": str(sft.resolve()), "fingerprint": adapters.fingerprint(sft)}
    retrain(shutil.copytree(sft, tmp_path / SFT))
    shutil.copytree(adapter, tmp_path / PPO)
    config = json.loads((tmp_path / PPO / "adapter_config.json").read_text())
    (tmp_path / PPO / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": str(SFT)}))
    result = run_main("export.py", "--tiny", cwd=tmp_path)
    assert result.returncode == 1 and f"That model is still at {sft.resolve()}." in result.stderr, result.stderr
    assert not (tmp_path / "checkpoint" / "ppo_merged").exists()
    result = run_main("export.py", "--tiny", ALLOW, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        f"{ALLOW}: applying the adapter at {PPO} to {SFT}, which is not the model it was trained on" in result.stdout
    )
    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint" / "ppo_merged")
