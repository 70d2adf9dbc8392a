"""Every numeric flag of every script has a declared range (beside the field in the project's own dataclasses,
cli.NUMERIC_RANGES for the TRL and transformers configs), NaN and inf never pass, choices are checked against what
exists, and a --config key left empty is refused unless its field takes None."""

import dataclasses
import importlib
import math
import types
import typing

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, get_scheduler

import train_ppo
from conftest import run_main
from hfppo import cli, errors, lora, paths, ppo_setup

# Every script that parses its flags with cli.parse_args.
SCRIPTS = [
    "train_sft.py", "train_rm.py", "train_ppo.py", "train_dpo.py", "train_grpo.py",
    "eval_sft.py", "eval_rm.py", "eval_ppo.py", "compare.py", "chat_web.py", "export.py",
    "benchmarks/ppo_throughput.py",
]  # fmt: skip


def module_of(script: str):
    return importlib.import_module(script.removesuffix(".py").replace("/", "."))


def is_numeric(annotation) -> bool:
    """int or float, alone or in a union (`int | None`, `int | str | None`); bool is not a number here."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(is_numeric(member) for member in typing.get_args(annotation))
    return False


# The libraries whose configs the scripts expose; their fields' ranges are cli.NUMERIC_RANGES', every other
# dataclass's are in its fields' metadata.
LIBRARIES = ("trl", "transformers")


def is_library_config(dataclass_type: type) -> bool:
    return dataclass_type.__module__.split(".")[0] in LIBRARIES


def numeric_fields(script: str) -> list[tuple[tuple, type, str]]:
    """(the parser's dataclasses, the dataclass, the field's name) of every numeric field that is a flag."""
    dataclass_types = tuple(module_of(script).make_parser().dataclass_types)
    found = []
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        found += [
            (dataclass_types, dataclass_type, f.name)
            for f in dataclasses.fields(dataclass_type)
            if f.init and is_numeric(hints[f.name])
        ]
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_field_of_every_parser_has_a_range(script):
    fields = numeric_fields(script)
    assert fields  # found at all; that it misses none, the next test's stale entries would show
    missing = [f"{cls.__name__}.{name}" for types_, cls, name in fields if cli.field_range(name, types_) is None]
    assert not missing, f"{script}: no range (in its field's metadata or cli.NUMERIC_RANGES) for {', '.join(missing)}"


def field_metadata(dataclass_type: type, name: str):
    return next(f.metadata for f in dataclasses.fields(dataclass_type) if f.name == name)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_field_of_the_project_s_dataclasses_has_its_range_beside_it(script):
    """In its metadata, not from the table, which holds the same names for the libraries' configs (seed, ...)."""
    own = [(cls, name) for _, cls, name in numeric_fields(script) if not is_library_config(cls)]
    missing = [f"{cls.__name__}.{name}" for cls, name in own if cli.RANGE_KEY not in field_metadata(cls, name)]
    assert not missing, f"{script}: no metadata[{cli.RANGE_KEY!r}] for {', '.join(missing)}"


def test_every_range_names_a_numeric_field_and_is_well_formed():
    found = [(cls, name) for script in SCRIPTS for _, cls, name in numeric_fields(script)]
    library = [(cls, name) for cls, name in found if is_library_config(cls)]
    names = {name for _, name in library} | {f"{cls.__name__}.{name}" for cls, name in library}
    stale = [key for key in cli.NUMERIC_RANGES if key not in names]
    assert not stale, f"ranges for no numeric field of a TRL or transformers config: {stale}"
    metadata = {f"{cls.__module__}.{cls.__name__}.{name}": field_metadata(cls, name) for cls, name in found}
    beside = [(key, entries[cli.RANGE_KEY]) for key, entries in metadata.items() if cli.RANGE_KEY in entries]
    for key, interval in [*cli.NUMERIC_RANGES.items(), *beside]:
        low, high = (float(bound) for bound in interval[1:-1].split(","))
        assert interval[0] in "[(" and interval[-1] in ")]" and low < high, key


# (script, flag, value, the range the message states). parse_args runs before main loads anything, so each is fast.
REFUSED = [
    ("train_sft.py", "seed", -1, f"in [0, {cli.MAX_SEED}]"),
    ("train_rm.py", "seed", 2**32, f"in [0, {cli.MAX_SEED}]"),
    ("train_ppo.py", "seed", -1, f"in [0, {cli.MAX_SEED}]"),
    ("train_dpo.py", "data_seed", -1, f"in [0, {cli.MAX_SEED}]"),
    ("eval_ppo.py", "seed", -1, f"in [0, {cli.MAX_SEED}]"),
    ("chat_web.py", "seed", 2**32, f"in [0, {cli.MAX_SEED}]"),
    ("benchmarks/ppo_throughput.py", "seed", -1, f"in [0, {cli.MAX_SEED}]"),
    ("train_sft.py", "max_grad_norm", "nan", ">= 0"),
    ("train_ppo.py", "max_grad_norm", "nan", "> 0"),
    ("train_ppo.py", "max_grad_norm", 0, "> 0"),  # would zero every gradient: PPO clips with it, no 0-means-off
    ("train_sft.py", "learning_rate", "inf", "> 0"),
    ("train_sft.py", "learning_rate", "nan", "> 0"),
    ("train_rm.py", "weight_decay", "nan", ">= 0"),
    ("train_ppo.py", "kl_coef", 1e308, f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_ppo.py", "kl_coef", "nan", f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_ppo.py", "vf_coef", "inf", f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_ppo.py", "temperature", 1e-45, ">= 0.01"),
    ("eval_sft.py", "temperature", "inf", ">= 0.01"),
    ("train_grpo.py", "temperature", 1e-45, ">= 0.01"),
    ("train_ppo.py", "num_train_epochs", "inf", "> 0"),
    ("train_dpo.py", "beta", -0.1, f"in (0, {cli.MAX_COEFFICIENT}]"),
    ("train_dpo.py", "beta", 0, f"in (0, {cli.MAX_COEFFICIENT}]"),
    ("train_dpo.py", "beta", "nan", f"in (0, {cli.MAX_COEFFICIENT}]"),
    ("train_dpo.py", "beta", 1e308, f"in (0, {cli.MAX_COEFFICIENT}]"),
    ("train_dpo.py", "label_smoothing", 0.5, "in [0, 0.5)"),
    ("train_grpo.py", "beta", -1, f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_grpo.py", "beta", "nan", f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_grpo.py", "num_generations", 1, ">= 2"),
    ("train_grpo.py", "top_k", -1, ">= 0"),
    ("train_grpo.py", "entropy_coef", -0.1, f"in [0, {cli.MAX_COEFFICIENT}]"),
    ("train_sft.py", "pad_to_multiple_of", -8, ">= 1"),
    ("train_sft.py", "max_steps", -2, ">= -1"),
    ("train_rm.py", "dataloader_num_workers", -1, ">= 0"),
    ("chat_web.py", "port", 0, f"in [1, {cli.MAX_PORT}]"),
]


@pytest.mark.parametrize("script, name, value, expected", REFUSED)
def test_a_bad_number_is_refused_with_status_2_naming_the_flag(tmp_path, script, name, value, expected):
    result = run_main(script, "--tiny", f"--{name}", value, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --{name} must be {expected}, got "), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "checkpoint").exists()


def parse(script: str, *args):
    module = module_of(script)
    return cli.parse_args(module.make_parser(), module.TINY_PRESET, list(map(str, args)))


@pytest.mark.parametrize(
    "script, name, value, parsed",
    [
        ("train_grpo.py", "beta", 0, 0.0),  # TRL's default: no KL term
        ("train_dpo.py", "beta", 0.1, 0.1),
        ("train_sft.py", "max_grad_norm", 0, 0.0),  # the Trainer's "no clipping"
        ("train_sft.py", "seed", 0, 0),
        ("train_sft.py", "seed", cli.MAX_SEED, cli.MAX_SEED),
        ("train_sft.py", "pad_to_multiple_of", "auto", None),  # the config's own word (None on a CPU)
        ("train_sft.py", "pad_to_multiple_of", 8, 8),
        ("train_ppo.py", "temperature", 0.01, 0.01),
    ],
)
def test_a_number_at_its_range_s_edge_or_a_word_the_field_takes_is_accepted(script, name, value, parsed):
    values = {f.name: getattr(args, f.name) for args in parse(script, "--tiny", f"--{name}", value) for f in
              dataclasses.fields(args)}  # fmt: skip
    assert values[name] == parsed


@pytest.mark.parametrize("script", ["train_sft.py", "train_rm.py", "train_dpo.py", "train_grpo.py", "train_ppo.py"])
def test_an_unknown_lr_scheduler_is_refused_listing_the_valid_ones(tmp_path, script):
    result = run_main(script, "--tiny", "--lr_scheduler_type", "foo", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--lr_scheduler_type" in result.stderr and "invalid choice: 'foo'" in result.stderr
    assert "'linear'" in result.stderr and "'cosine'" in result.stderr


def test_a_config_s_unknown_lr_scheduler_is_refused_too(tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text("lr_scheduler_type: foo\n")
    result = run_main("train_ppo.py", "--tiny", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert f"--config {config}: lr_scheduler_type 'foo' is not one of linear, cosine" in result.stderr


@pytest.mark.parametrize("name", train_ppo.LR_SCHEDULERS)
def test_every_scheduler_ppo_offers_steps_as_its_loop_steps_it(name):
    """The loop builds the scheduler from (warmup, updates) alone and steps it with no metric."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = get_scheduler(name, optimizer, 2, 10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert math.isfinite(scheduler.get_last_lr()[0])


@pytest.mark.parametrize(
    "script, text, key",
    [
        ("train_ppo.py", "learning_rate: null\n", "learning_rate"),
        ("train_sft.py", "num_train_epochs:\n", "num_train_epochs"),
        ("train_dpo.py", "beta: ~\n", "beta"),
        ("train_rm.py", "system_prompt: null\n", "system_prompt"),
        # their types take None, but transformers saves to trainer_output, or refuses None, instead of the default
        ("train_sft.py", "output_dir:\n", "output_dir"),
        ("train_grpo.py", "report_to: null\n", "report_to"),
    ],
)
def test_a_config_key_left_empty_is_refused_naming_file_and_key(tmp_path, script, text, key):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    result = run_main(script, "--tiny", "--config", config, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--config {config}: {key} is empty (null), and --{key} needs a value" in result.stderr


def test_a_config_key_left_empty_is_unset_where_the_field_takes_none(tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text("total_episodes: null\ncritic_learning_rate:\n")
    _, ppo_config = parse("train_ppo.py", "--tiny", "--total_episodes", 64, "--config", config)
    assert ppo_config.total_episodes == 64  # the flag outranks the file
    _, ppo_config = parse("train_ppo.py", "--tiny", "--config", config)
    assert (ppo_config.total_episodes, ppo_config.critic_learning_rate) == (None, None)
    config.write_text("output_dir:\n")  # PPO's default is None: --from_base picks the folder
    _, ppo_config = parse("train_ppo.py", "--tiny", "--config", config)
    assert ppo_config.output_dir is None


def tiny_model() -> torch.nn.Module:
    shape = Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    return AutoModelForCausalLM.from_config(shape)


@pytest.mark.parametrize(
    "targets, missing",
    [
        (["foo"], "foo"),
        (["q_proj", "fc1"], "fc1"),  # PEFT would adapt q_proj and skip fc1 in silence
        ("foo", "foo"),  # one name alone, as TRL's ModelConfig passes it: a regular expression
        (["all-linear"], "all-linear"),  # in a list, a name like any other: PEFT finds no such module
    ],
)
def test_lora_target_modules_the_model_lacks_are_refused_naming_its_linear_layers(targets, missing):
    with pytest.raises(errors.PipelineError) as error:
        lora.check_target_modules(tiny_model(), targets, "checkpoint/sft")
    message = str(error.value)
    assert message.startswith(f"--lora_target_modules: checkpoint/sft has no module {missing},")
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj and lm_head" in message


@pytest.mark.parametrize(
    "targets", [list(lora.LORA_TARGET_MODULES), ["self_attn.q_proj"], ".*_proj", "all-linear", None]
)
def test_lora_target_modules_the_model_has_pass(targets):
    lora.check_target_modules(tiny_model(), targets, "checkpoint/sft")


@pytest.mark.parametrize("script", ["train_ppo.py", "train_dpo.py", "train_grpo.py"])
def test_each_lora_script_refuses_target_modules_its_model_lacks(tmp_path, sft_run, rm_run, tiny_base, script):
    models = ["--sft_model_path", sft_run / paths.SFT_DIR]
    models += ["--reward_model_path", rm_run / paths.RM_DIR] if script != "train_dpo.py" else []
    models += ["--value_model_path", tiny_base] if script == "train_ppo.py" else []
    result = run_main(script, "--tiny", *models, "--lora_target_modules", "q_proj", "fc1", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: --lora_target_modules: {sft_run / paths.SFT_DIR} has no module fc1," in result.stderr
    assert "q_proj, k_proj, v_proj" in result.stderr
    assert not list(tmp_path.rglob("adapter_model.safetensors"))  # refused before any training


def eager_order(num_prompts: int, num_needed: int, seed: int) -> torch.Tensor:
    """The schedule as train_ppo.py built it before it was lazy: every epoch's shuffle of the run up front."""
    epochs = math.ceil(num_needed / num_prompts)
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(num_prompts, generator=generator) for _ in range(epochs)])[:num_needed]


def fake_accelerator(num_processes: int, process_index: int):
    return type("Process", (), {"num_processes": num_processes, "process_index": process_index})


# (prompts, answers per update, updates, processes, the update a resumed run starts at)
SCHEDULES = [(16, 16, 8, 1, 0), (50, 12, 9, 3, 0), (50, 12, 9, 3, 4), (7, 32, 6, 2, 0), (900, 64, 30, 4, 17)]


@pytest.mark.parametrize("num_prompts, batch_size, num_updates, num_processes, start", SCHEDULES)
def test_the_lazy_prompt_schedule_is_the_eager_one(num_prompts, batch_size, num_updates, num_processes, start):
    eager = eager_order(num_prompts, num_updates * batch_size, seed=42)
    for process in range(num_processes):
        accelerator = fake_accelerator(num_processes, process)
        order = ppo_setup.PromptOrder(num_prompts, seed=42)  # each process builds its own, as in the loop
        for update in range(start, num_updates):
            expected = ppo_setup.process_share(eager, update, batch_size, accelerator)
            assert ppo_setup.process_share(order, update, batch_size, accelerator).tolist() == expected.tolist()
        assert len(order._kept) <= math.ceil(batch_size / num_prompts) + 1  # an update's epochs, not the run's


@pytest.mark.parametrize(
    "flags, asked",
    [
        (["--total_episodes", 16_000_000_000], "--total_episodes 16000000000"),
        (["--num_train_epochs", "1e9"], "--num_train_epochs 1000000000.0 of "),
        (["--num_train_epochs", "1e308"], "--num_train_epochs 1e+308 of "),  # beyond float's range once multiplied
    ],
)
def test_a_ppo_run_beyond_sense_is_refused_before_any_model_loads(tmp_path, flags, asked):
    result = run_main("train_ppo.py", "--tiny", *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {asked}")
    assert f"makes more than {ppo_setup.MAX_UPDATES:,} updates of" in result.stderr
    assert not (tmp_path / "checkpoint").exists()
