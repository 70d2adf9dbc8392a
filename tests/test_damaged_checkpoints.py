"""Checkpoint files that are damaged: every JSON file a script reads from a checkpoint is named with what is wrong and
the command that writes it again, a model the libraries cannot load is one message (and one line of the page's list,
not a page that fails to start), and a resume refuses a checkpoint whose optimizer, schedule, random state or step
count is missing or damaged unless --resume_resets_state accepts starting those afresh, which it then says."""

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

import chat_web
import common
import train_ppo
from conftest import run_main
from hfppo import checkpoints, cli, errors, paths, ppo_saves, resuming, tiny

COMMAND = "python train_sft.py --tiny --output_dir mine"
# A JSON file cut short, as by a full disk or a kill mid-write; emptied; and valid JSON that is not a mapping.
DAMAGES = {
    "empty": (lambda text: "", "is empty"),
    "truncated": (lambda text: text[: len(text) // 2], "is not valid JSON ("),
    "not a mapping": (lambda text: "[1, 2]", "holds a JSON list, not a mapping"),
}
# The sizes of hand_made_checkpoint's model: one small Qwen2 layer, whose weights fit its config.json.
SMALL_QWEN2 = dict(
    vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=1,
)  # fmt: skip
CHECKPOINT_FILES = [
    "config.json",
    "adapter_config.json",
    paths.ADAPTER_BASE_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "train_results.json",
]


def hand_made_checkpoint(folder):
    """A folder require_checkpoint takes for a model: every JSON file a checkpoint may hold, weights, a tokenizer."""
    folder.mkdir(parents=True)
    files = {
        "config.json": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **SMALL_QWEN2},
        "adapter_config.json": {"base_model_name_or_path": "checkpoint/sft", "r": 32, "lora_alpha": 8},
        paths.ADAPTER_BASE_FILE: {"base_model_path": "/home/me/run/checkpoint/sft", "fingerprint": "0" * 64},
        "tokenizer.json": {"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": {"a": 0}}},
        "tokenizer_config.json": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "train_results.json": {"train_runtime": 12.5, "train_samples_per_second": 20.0},
    }
    for name, value in files.items():
        (folder / name).write_text(json.dumps(value, indent=2))
    save_file(Qwen2ForCausalLM(Qwen2Config(**SMALL_QWEN2)).state_dict(), folder / "model.safetensors")
    return folder


def damage(file, kind: str) -> str:
    """Damage `file` in the way `kind` of DAMAGES says; what the message says about it."""
    change, said = DAMAGES[kind]
    file.write_text(change(file.read_text()))
    return said


# ----------------------------------------------------------------------------------------------------------------
# One reader for a checkpoint's JSON files


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_json_file_is_named_with_the_command_that_writes_it(tmp_path, name, kind):
    folder = hand_made_checkpoint(tmp_path / "model")
    checkpoints.require_checkpoint(folder, COMMAND)  # whole, it passes
    said = damage(folder / name, kind)
    with pytest.raises(errors.PipelineError) as refused:
        checkpoints.require_checkpoint(folder, COMMAND)
    message = str(refused.value)
    assert f"the checkpoint file {folder / name} {said}" in message
    assert message.endswith(f"Write it again: {COMMAND}")


def test_a_truncated_file_says_where_it_stops(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1,\n "b": ')
    with pytest.raises(errors.PipelineError, match=r"is not valid JSON \(Expecting value at line 2, column 7\)"):
        checkpoints.read_checkpoint_json(tmp_path / "config.json", "Do this.")


@pytest.mark.parametrize(
    "name, keys, said",
    [
        (
            "train_results.json",
            checkpoints.CHECKPOINT_JSON[paths.TRAIN_RESULTS_FILE],
            "has no 'train_samples_per_second'",
        ),
        ("adapter_config.json", ("base_model_name_or_path",), "has no 'base_model_name_or_path'"),
        (paths.ADAPTER_BASE_FILE, checkpoints.CHECKPOINT_JSON[paths.ADAPTER_BASE_FILE], "has no 'fingerprint'"),
    ],
)
def test_a_file_without_a_key_the_pipeline_reads_is_refused(tmp_path, name, keys, said):
    folder = hand_made_checkpoint(tmp_path / "model")
    value = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({key: v for key, v in value.items() if key != keys[-1]}))
    with pytest.raises(errors.PipelineError, match=said):
        checkpoints.read_checkpoint_json(folder / name, COMMAND, keys)
    if name == "adapter_config.json":  # where an adapter is loaded
        with pytest.raises(errors.PipelineError, match=said):
            common.adapter_base(folder, COMMAND)


@pytest.mark.parametrize(
    "script, name",
    [("eval_sft.py", "config.json"), ("eval_rm.py", "tokenizer.json"), ("eval_ppo.py", "adapter_config.json")],
)
def test_a_script_given_a_damaged_checkpoint_says_so_without_a_traceback(tmp_path, script, name):
    folder = hand_made_checkpoint(tmp_path / "model")
    if script == "eval_ppo.py":
        (folder / "config.json").unlink()  # an adapter, as train_ppo.py writes
    elif script == "eval_rm.py":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"architectures": ["Qwen2ForSequenceClassification"]}))
    damage(folder / name, "truncated")
    answer = ("--answer", "y") if script == "eval_rm.py" else ()
    result = run_main(script, "--tiny", "--model_path", folder, "--question", "x", *answer, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: the checkpoint file {folder / name} is not valid JSON" in result.stderr


def test_a_damaged_recipe_stamp_rebuilds_the_tiny_base_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths.TINY_BASE_DIR.mkdir(parents=True)
    (paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE).write_text(json.dumps(tiny.tiny_recipe()))
    assert not tiny.stale_tiny_base(paths.TINY_BASE_DIR)
    damage(paths.TINY_BASE_DIR / tiny.TINY_RECIPE_FILE, "truncated")
    assert tiny.stale_tiny_base(paths.TINY_BASE_DIR)


def test_resume_files_of_the_pipeline_are_read_by_the_reader(tmp_path):
    """run_settings.json (every stage) and train_ppo.py's progress.json, cut short."""
    (tmp_path / resuming.RUN_SETTINGS_FILE).write_text('{"seed": 4')
    with pytest.raises(errors.PipelineError, match="run_settings.json is not valid JSON .* Resume from another"):
        resuming.check_resume(tmp_path, {"seed": 42})
    state = tmp_path / ppo_saves.TRAINING_STATE_DIR
    state.mkdir()
    (state / ppo_saves.PROGRESS_FILE).write_text("")
    with pytest.raises(errors.PipelineError, match="progress.json is empty: .* Resume from another checkpoint-<upd"):
        ppo_saves.resume_point(tmp_path, {"batch_size": 16, "num_updates": 4, "processes": 1}, {})


# ----------------------------------------------------------------------------------------------------------------
# What the libraries raise on files that parse but make no model


def test_a_tokenizer_json_the_tokenizers_library_rejects_is_one_message(tmp_path):
    folder = hand_made_checkpoint(tmp_path / "model")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": [], "model": {"type": "X"}}))
    with pytest.raises(errors.PipelineError, match=f"could not be loaded .* Write it again: {COMMAND}"):
        checkpoints.load_tokenizer(folder, COMMAND)


def test_running_out_of_memory_is_not_called_a_damaged_checkpoint():
    with pytest.raises(torch.OutOfMemoryError):
        with checkpoints.loading("model", COMMAND):
            raise torch.OutOfMemoryError("out of memory")


def test_a_config_whose_sizes_are_not_the_weights_is_one_message(tiny_base, tmp_path):
    folder = shutil.copytree(tiny_base, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"hidden_size": config["hidden_size"] // 2}))
    with pytest.raises(errors.PipelineError, match=r"could not be loaded \(RuntimeError: .*Write it again: x"):
        common.load_model(AutoModelForCausalLM, folder, "x", "language model")


def test_the_page_lists_a_model_it_cannot_load_and_starts_with_the_others(tiny_base, tmp_path):
    sft = shutil.copytree(tiny_base, tmp_path / "sft")
    said = damage(sft / "config.json", "truncated")
    (sft / paths.HELD_OUT_FILE).write_text('{"question": "x"\n')  # the example questions, damaged too
    dpo = shutil.copytree(tiny_base, tmp_path / "dpo")
    damage(dpo / "tokenizer.json", "empty")
    args = dataclasses.replace(
        chat_web.WebArguments(),
        **chat_web.TINY_PRESET | {"base_model_path": str(tiny_base), "sft_model_path": str(sft)},
        tiny=True,
        dpo_model_path=str(dpo),
        **{f"{name}_model_path": f"/nonexistent/{name}" for name in ("ppo", "ppo_base", "grpo")},
        reward_model_path="/nonexistent/rm",
    )
    models = chat_web.load_models(args)
    assert [column.name for column in models.columns] == ["base"]
    assert f"the checkpoint file {sft / 'config.json'} {said}" in models.missing["sft"]
    assert f"the checkpoint file {dpo / 'tokenizer.json'} is empty" in models.missing["dpo"]
    assert models.examples == list(chat_web.FALLBACK_QUESTIONS[: args.num_examples])
    chat_web.build_page(models, args)  # the page builds with the base model's column


# ----------------------------------------------------------------------------------------------------------------
# A resume refuses a checkpoint without its whole training state, or says what it starts afresh


def trainer_rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}


@pytest.mark.parametrize(
    "kind, state, said",
    [
        ("rng", trainer_rng_state(), None),
        ("rng", {"python": (3, (1, 2), None), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
         "holds no usable random state"),
        ("rng", {"numpy": np.random.get_state()}, "holds no usable random state"),
        ("rng", b"garbage", "is damaged (torch cannot read it)"),
        ("optimizer", {"state": {}, "param_groups": []}, None),
        ("optimizer", {"param_groups": []}, "holds no optimizer state"),
        ("optimizer", b"", "is damaged (torch cannot read it)"),
        ("scheduler", {"last_epoch": 3}, None),
        ("scheduler", [1, 2], "holds no scheduler state"),
        ("step", b'{"global_step": 3}', None),
        ("step", b'{"global_step": 3', "is not valid JSON"),
        ("step", b"{}", "has no 'global_step'"),
    ],
)  # fmt: skip
def test_each_training_state_is_loaded_to_check_it(tmp_path, kind, state, said):
    file = tmp_path / "state"
    if isinstance(state, bytes):
        file.write_bytes(state)
    else:
        torch.save(state, file)
    problem = resuming.state_problem(file, kind)
    assert problem == said if said is None else said in problem
    assert resuming.state_problem(tmp_path / "absent", kind) == "is missing"


@pytest.fixture(scope="module")
def sft_checkpoint(tiny_base, tmp_path_factory):
    """checkpoint-1 of a two-step SFT run: the Trainer's whole training state, and its arguments to resume it."""
    workdir = tmp_path_factory.mktemp("sft_resume")
    steps = ("--max_steps", 2, "--save_strategy", "steps", "--save_steps", 1)
    args = ("--tiny", "--model_name_or_path", tiny_base, *steps)
    result = run_main("train_sft.py", *args, "--save_total_limit", 2, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / paths.SFT_DIR / "checkpoint-1", args


TRAINER_DAMAGES = {  # file of the Trainer's checkpoint -> how it is damaged, and what a resume without it resets
    "optimizer.pt": (lambda file: file.unlink(), "is missing", "the optimizer starts afresh"),
    "scheduler.pt": (lambda file: file.write_bytes(b"x"), "is damaged", "schedule starts again from its first step"),
    "rng_state.pth": (lambda file: torch.save({"cpu": 1}, file), "holds no usable random state", "random numbers"),
    "trainer_state.json": (lambda file: file.write_text("{"), "is not valid JSON", "starts again at step 0"),
    "config.json": (lambda file: file.write_text(""), "is empty", "Resume from another checkpoint-<step> folder"),
}


@pytest.mark.parametrize("name", TRAINER_DAMAGES)
def test_a_trainer_resume_without_its_whole_state_is_refused(sft_checkpoint, tmp_path, name):
    original, args = sft_checkpoint
    checkpoint = shutil.copytree(original, tmp_path / "checkpoint-1")
    change, problem, reset = TRAINER_DAMAGES[name]
    change(checkpoint / name)
    result = run_main("train_sft.py", *args, "--resume_from_checkpoint", checkpoint, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert name in result.stderr and problem in result.stderr and reset in result.stderr
    if name != "config.json":  # the weights' own files: no flag stands in for them
        assert f"{name} (" in result.stderr and "add --resume_resets_state" in result.stderr


def test_resume_resets_state_resumes_and_says_what_it_starts_afresh(sft_checkpoint, tmp_path):
    original, args = sft_checkpoint
    checkpoint = shutil.copytree(original, tmp_path / "checkpoint-1")
    (checkpoint / "optimizer.pt").unlink()
    (checkpoint / "rng_state.pth").write_bytes(b"garbage")
    flags = ("--resume_from_checkpoint", checkpoint, "--resume_resets_state", "--output_dir", tmp_path / "sft")
    result = run_main("train_sft.py", *args, *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout.split(f"Resuming from {checkpoint} with --resume_resets_state, where ")[1].splitlines()[0]
    assert "optimizer.pt (the optimizer's state) is missing" in said and "rng_state.pth" in said
    assert "the optimizer starts afresh" in said and "random numbers" in said
    state = json.loads((tmp_path / "sft" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # it continued from step 1, not from 0
    assert (checkpoint / "rng_state.pth").read_bytes() == b"garbage"  # the checkpoint is left as it was


@pytest.fixture(scope="module")
def ppo_checkpoint(tiny_base, tmp_path_factory):
    """checkpoint-1 of a two-update PPO run on the tiny base (its own reference; a reward of 0), and how to run it."""
    workdir = tmp_path_factory.mktemp("ppo_resume")
    models = ("--sft_model_path", tiny_base, "--value_model_path", tiny_base, "--num_eval_questions", 0)
    args = ("--tiny", *models, "--total_episodes", 32, "--save_steps", 1)

    def run(*more):
        parsed = cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, [*map(str, args + more)])
        train_ppo.main(*parsed, reward_fn=lambda queries, answers: torch.zeros(len(answers)))

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        run("--output_dir", workdir / "ppo")
    return workdir / "ppo" / "checkpoint-1", run


@pytest.mark.parametrize(
    "name, reset",
    [
        (ppo_saves.OPTIMIZER_FILE, "the optimizer starts afresh"),
        (ppo_saves.SCHEDULER_FILE, "schedule starts again"),
        (ppo_saves.RNG_FILE.format(0), "random numbers"),
    ],
)
def test_ppo_refuses_a_resume_without_its_whole_state_and_resumes_with_the_flag(
    ppo_checkpoint, tmp_path, monkeypatch, capsys, name, reset
):
    original, run = ppo_checkpoint
    checkpoint = shutil.copytree(original, tmp_path / "checkpoint-1")
    (checkpoint / ppo_saves.TRAINING_STATE_DIR / name).write_bytes(b"garbage")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.PipelineError, match=f"{name} .*is damaged .*{reset}.*add --resume_resets_state"):
        run("--resume_from_checkpoint", checkpoint, "--output_dir", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    run("--resume_from_checkpoint", checkpoint, "--output_dir", tmp_path / "ppo", "--resume_resets_state")
    assert "with --resume_resets_state, where" in capsys.readouterr().out
    checkpoints.require_checkpoint(tmp_path / "ppo", "x", "adapter")
