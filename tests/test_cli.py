"""Every hyperparameter comes from one place: dataclass defaults < --tiny preset < --config YAML < command line."""

import dataclasses
import os

import pytest

import chat_web
import compare
import eval_ppo
import eval_rm
import eval_sft
import export
import train_dpo
import train_grpo
import train_ppo
import train_rm
import train_sft
from conftest import run_script
from hfppo import cli, errors, lifecycle, paths, runtime

STAGES = {"sft": train_sft, "rm": train_rm, "ppo": train_ppo}


def parse(*args, script=train_sft):
    return cli.parse_args(script.make_parser(), script.TINY_PRESET, list(args))


def test_real_defaults_mirror_the_original_run():
    script_args, training_args, model_args = parse()
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert script_args.dataset_name == "jackmokaka/btfChinese-DPO-small"
    assert script_args.sft_fraction == 0.1
    assert (training_args.num_train_epochs, training_args.learning_rate, training_args.max_length) == (2, 1e-5, 500)
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 32
    assert training_args.bf16 is runtime.bf16_available()  # TRL's own default is bf16=True, even on a CPU


def test_tiny_preset_then_config_then_flags(tmp_path):
    script_args, training_args, model_args = parse("--tiny")
    assert (model_args.model_name_or_path, script_args.model_source) == (str(paths.TINY_BASE_DIR), "tiny")
    assert training_args.learning_rate == train_sft.TINY_PRESET["learning_rate"]

    config = tmp_path / "sft.yaml"
    config.write_text("learning_rate: 2.0e-4\nsft_fraction: 0.3\n")
    script_args, training_args, _ = parse("--tiny", "--config", str(config))
    assert (training_args.learning_rate, script_args.sft_fraction) == (2e-4, 0.3)
    assert training_args.num_train_epochs == train_sft.TINY_PRESET["num_train_epochs"]

    script_args, training_args, _ = parse("--tiny", "--config", str(config), "--learning_rate", "5e-4")
    assert training_args.learning_rate == 5e-4


def fields(parsed):
    return [{f.name: getattr(args, f.name) for f in dataclasses.fields(args)} for args in parsed]


@pytest.mark.parametrize("stage", STAGES)
def test_example_config_spells_out_the_defaults(stage):
    script = STAGES[stage]
    config = paths.ROOT / "configs" / f"{stage}.yaml"
    assert fields(parse("--config", str(config), script=script)) == fields(parse(script=script))


@pytest.mark.parametrize("stage", STAGES)
def test_the_cpu_preset_runs_the_real_model_in_fp32_on_the_bundled_sample(stage):
    """configs/cpu/ (make demo-real): every stage parses, in range, on Qwen2.5-0.5B-Instruct and the bundled sample,
    in fp32 with the short lengths its README table was measured at; SFT on every training row."""
    parsed = fields(parse("--config", str(paths.ROOT / "configs" / "cpu" / f"{stage}.yaml"), script=STAGES[stage]))
    settings = {key: value for part in parsed for key, value in part.items()}
    assert settings["dataset_name"] == "data/sample.jsonl" and settings["bf16"] is False
    model = settings["base_model_path" if stage == "ppo" else "model_name_or_path"]
    assert model == paths.DEFAULT_MODEL
    if stage == "ppo":
        assert (settings["total_episodes"], settings["response_length"], settings["value_model_path"]) == (
            32,
            48,
            "checkpoint/rm",
        )
        assert (settings["learning_rate"], settings["critic_learning_rate"], settings["lora_alpha"]) == (
            5e-5,
            1e-5,
            32,
        )
    else:
        assert settings["max_length"] == 128 and settings["num_train_epochs"] == 2
    if stage == "sft":
        assert settings["sft_fraction"] == 1.0


def test_rm_defaults_mirror_the_original_run():
    script_args, training_args, model_args = parse(script=train_rm)
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"  # the base, not the SFT model
    assert (training_args.num_train_epochs, training_args.learning_rate, training_args.max_length) == (2, 1e-5, 500)
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 32
    assert training_args.center_rewards_coefficient == 0.01
    assert script_args.eval_fraction == 0.1
    assert training_args.bf16 is runtime.bf16_available()


def test_ppo_defaults_mirror_the_original_run():
    script_args, config = parse(script=train_ppo)
    assert (script_args.sft_model_path, script_args.reward_model_path) == ("checkpoint/sft", "checkpoint/rm")
    assert script_args.value_model_path == "Qwen/Qwen2.5-0.5B-Instruct"  # the critic starts from the base
    assert (config.learning_rate, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
        5e-6,
        2,
        4,
    )
    assert (config.local_rollout_forward_batch_size, config.cliprange, config.cliprange_value) == (8, 0.1, 0.5)
    assert (config.num_train_epochs, config.response_length, config.temperature) == (2, 200, 0.7)
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (32, 8, 0.0)
    assert (config.gamma, config.lam, config.kl_estimator) == (1.0, 0.95, "k1")
    assert script_args.eval_fraction == 0.1


def test_eval_question_flag_repeats():
    (args,) = cli.parse_args(eval_sft.make_parser(), eval_sft.TINY_PRESET, ["--question", "a", "b", "--question", "c"])
    assert args.question == ["a", "b", "c"]
    (args,) = cli.parse_args(eval_sft.make_parser(), eval_sft.TINY_PRESET, ["--tiny"])
    assert args.max_new_tokens == eval_sft.TINY_PRESET["max_new_tokens"]


def test_eval_rm_parses_like_the_others():
    (args,) = parse("--question", "a", "--answer", "x", "--question", "b", script=eval_rm)
    assert (args.question, args.answer) == (["a", "b"], ["x"])
    with pytest.raises(errors.PipelineError, match="one --answer per --question"):
        eval_rm.main(args)
    # --max_length defaults to the reward model's training length, the tiny preset's with --tiny.
    assert parse(script=eval_rm)[0].max_length == train_rm.DEFAULTS["max_length"]
    assert parse("--tiny", script=eval_rm)[0].max_length == train_rm.TINY_PRESET["max_length"]


# ----------------------------------------------------------------------------------------------------------------
# Argument and config errors: one ArgumentError paragraph, exit status 2, raised before any data or model loads.

SCRIPTS = {"train_sft": train_sft, "train_rm": train_rm, "train_ppo": train_ppo}
SCRIPTS |= {"train_dpo": train_dpo, "train_grpo": train_grpo, "chat_web": chat_web}
SCRIPTS |= {"eval_sft": eval_sft, "eval_rm": eval_rm, "eval_ppo": eval_ppo, "compare": compare, "export": export}


def refused(script: str, *args) -> str:
    """The ArgumentError message of parsing `args` for `script`."""
    with pytest.raises(errors.ArgumentError) as error:
        parse(*map(str, args), script=SCRIPTS[script])
    return str(error.value)


@pytest.mark.parametrize(
    "script, flag, nearest",
    [
        ("train_sft", "--lerning_rate", "--learning_rate"),
        ("train_rm", "--eval_fracton", "--eval_fraction"),
        ("train_ppo", "--kl_coeff", "--kl_coef"),
        ("train_ppo", "--kl-coeff", "--kl_coef"),  # the hyphenated spelling finds the field too
        ("eval_sft", "--max_new_tokns", "--max_new_tokens"),
        ("eval_rm", "--num_exmples", "--num_examples"),
        ("eval_ppo", "--temprature", "--temperature"),
        ("train_dpo", "--bta", "--beta"),
        ("train_grpo", "--num_genrations", "--num_generations"),
        ("chat_web", "--prot", "--port"),
    ],
)
def test_an_unknown_flag_is_refused_with_the_nearest_ones(script, flag, nearest):
    message = refused(script, "--tiny", flag, "1")
    assert f"unknown flag {flag} (did you mean {nearest}" in message
    assert "--help" in message


def test_a_stray_value_is_refused():
    assert "unexpected '0.1'" in refused("train_ppo", "0.1", "--tiny")


@pytest.mark.parametrize(
    "flag, value, choices",
    [("--model_source", "modelscop", "'modelscope', 'hf', 'tiny'"), ("--kl_estimator", "k2", "'k1', 'k3'")],
)
def test_a_bad_choice_lists_the_valid_ones(flag, value, choices):
    message = refused("train_ppo", flag, value)
    assert f"invalid choice: '{value}' (choose from {choices})" in message
    assert "usage:" not in message


CONFIG_ERRORS = {
    "missing file": (None, "no such file"),
    "not YAML": ("learning_rate: [1\n", "is not valid YAML"),
    "not a mapping": ("- learning_rate\n", "must be a YAML mapping"),
    "misspelled key": ("kl_coeff: 0.1\n", "unknown key kl_coeff (did you mean kl_coef"),
    "bad choice": ("kl_estimator: k2\n", "kl_estimator 'k2' is not one of k1 and k3"),
    "float for an integer": ("num_ppo_epochs: 2.5\n", "--num_ppo_epochs/--num-ppo-epochs: invalid int value: '2.5'"),
    "list for a number": ("kl_coef: [0.1]\n", "kl_coef is a list, [0.1], and --kl_coef takes one value"),
    "out of range": ("gamma: 2\n", "--gamma must be in [0, 1], got 2.0"),
    "key twice": ("kl_coef: 0.1\nseed: 3\nkl_coef: 0.2\n", "gives the key 'kl_coef' twice, on lines 1 and 3"),
    "key twice in env": ("env:\n  A: 1\n  A: 2\n", "gives the key 'A' twice, on lines 2 and 3"),
    "list for text": ("system_prompt: [a, b]\n", "system_prompt is a list, ['a', 'b'], and --system_prompt takes one"),
    "mapping for a path": ("output_dir: {a: 1}\n", "output_dir is a mapping, {'a': 1}, and --output_dir takes one"),
    "date for text": ("system_prompt: 2024-01-01\n", "system_prompt is a YAML date, datetime.date(2024, 1, 1)"),
    "list in a list": ("lora_target_modules: [q_proj, [k_proj]]\n", "lora_target_modules holds ['k_proj'], and"),
    "env name with =": ('env:\n  "A=B": 1\n', "env 'A=B' is not an environment variable's name"),
    "env name empty": ('env:\n  "": 1\n', "env '' is not an environment variable's name"),
    "env value a list": ("env:\n  A: [1, 2]\n", "env A is [1, 2]; an environment variable takes one value"),
    "billion laughs": (
        "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcd", "bcde")),
        "its aliases (*name) expand to 2",
    ),
    "alias inside itself": ("kl_coef: &a [*a]\n", "an alias (*name) is inside the value it names"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_a_bad_config_file_is_named_with_its_problem(tmp_path, case):
    text, expected = CONFIG_ERRORS[case]
    config = tmp_path / "ppo.yaml"
    if text is not None:
        config.write_text(text)
    message = refused("train_ppo", "--config", config)
    assert expected in message
    if case not in ("float for an integer", "out of range"):
        assert f"--config {config}" in message
    assert "\n" not in message and len(message) < 400  # the laughs' 2 MB expansion is not quoted


def test_the_configs_environment_is_set_only_when_the_whole_file_is_valid(tmp_path, monkeypatch):
    monkeypatch.delenv("HFPPO_TEST_VARIABLE", raising=False)
    config = tmp_path / "ppo.yaml"
    config.write_text("env:\n  HFPPO_TEST_VARIABLE: 1\nkl_coef: [0.1]\n")
    refused("train_ppo", "--config", config)
    assert "HFPPO_TEST_VARIABLE" not in os.environ
    config.write_text("env:\n  HFPPO_TEST_VARIABLE: 1\nkl_coef: 0.1\n")
    parse("--config", str(config), script=train_ppo)
    assert os.environ["HFPPO_TEST_VARIABLE"] == "1"


CONFIGS_READ = {  # (script, YAML, {field: value parsed})
    "a merge overridden is no duplicate": (
        "train_ppo",
        "<<: {seed: 3, kl_coef: 0.2}\nseed: 5\n",
        {"seed": 5, "kl_coef": 0.2},
    ),
    "a few aliases": (
        "train_ppo",
        "learning_rate: &lr 2.0e-4\ncritic_learning_rate: *lr\n",
        {"critic_learning_rate": 2e-4},
    ),
    "a list field's one value": ("eval_sft", "question: hi\n", {"question": ["hi"]}),
    "a list field's numbers as text": ("eval_sft", "question: [1, 2.5]\n", {"question": ["1", "2.5"]}),
    "a mapping field's mapping": (
        "train_sft",
        "model_init_kwargs: {revision: main}\n",
        {"model_init_kwargs": {"revision": "main"}},
    ),
    "a text field's number": ("train_ppo", "system_prompt: 42\n", {"system_prompt": "42"}),
}


@pytest.mark.parametrize("case", CONFIGS_READ)
def test_a_config_value_of_the_fields_type_is_read(tmp_path, case):
    script, text, expected = CONFIGS_READ[case]
    config = tmp_path / "run.yaml"
    config.write_text(text)
    parsed = fields(parse("--config", str(config), script=SCRIPTS[script]))
    settings = {key: value for part in parsed for key, value in part.items()}
    assert {key: settings[key] for key in expected} == expected


LONG = "x" * 5000  # a value far longer than a message may quote (errors.MAX_SHOWN)
LONG_VALUES = {  # where a message quotes a value: (script, flags, YAML or None)
    "argparse's conversion": ("train_ppo", ["--num_ppo_epochs", LONG], None),
    "argparse's choice": ("train_ppo", ["--kl_estimator", LONG], None),
    "a stray value": ("train_ppo", [LONG], None),
    "an unknown flag": ("train_ppo", ["--" + LONG, "1"], None),
    "a config choice": ("train_ppo", [], f"kl_estimator: {LONG}\n"),
    "a config key": ("train_ppo", [], f"? {LONG}\n: 1\n"),  # explicit: a plain key is at most 1024 characters
    "a config list for text": ("train_ppo", [], f"system_prompt: [{LONG}]\n"),
    "a config number from text": ("train_ppo", [], f"num_ppo_epochs: {LONG}\n"),
    "a value of many lines": ("train_ppo", [], "system_prompt: ['a\n\n  b']\n"),
}


@pytest.mark.parametrize("case", LONG_VALUES)
def test_a_value_in_a_message_is_cut_to_one_short_line(tmp_path, case):
    script, flags, text = LONG_VALUES[case]
    if text is not None:
        (tmp_path / "run.yaml").write_text(text)
        flags = ["--config", str(tmp_path / "run.yaml")]
    message = refused(script, *flags)
    assert "x" * (errors.MAX_SHOWN + 1) not in message and "\n" not in message
    assert "[...]" in message or case == "a value of many lines"


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--fsdp", LONG, "Unknown `fsdp` option: xxx"),  # TrainingArguments' own check quotes the value
        ("--accelerator_config", LONG, "missing or unreadable: [Errno 36] File name too long"),
        ("--accelerator_config", "nofile.json", "missing or unreadable: [Errno 2] No such file or directory"),
    ],
)
def test_a_library_refusal_of_a_setting_is_one_short_paragraph(flag, value, expected):
    message = refused("train_sft", flag, value)
    assert expected in message and "\n" not in message
    assert len(message) < errors.MAX_LIBRARY_MESSAGE + 150 and ("[...]" in message) == (value == LONG)


def test_a_range_message_cuts_the_value_it_quotes():
    with pytest.raises(errors.ArgumentError) as error:
        cli.check_values({"gamma": [0.5] * 1000}, (train_ppo.PPOConfig,))
    assert str(error.value).startswith("--gamma must be in [0, 1], got [0.5, 0.5") and len(str(error.value)) < 120


@pytest.mark.parametrize(
    "script, flag",
    [
        ("train_sft", "--dataset_name"),
        ("train_sft", "--output_dir"),
        ("train_sft", "--resume_from_checkpoint"),
        ("train_ppo", "--sft_model_path"),
        ("eval_rm", "--metrics_file"),
        ("export", "--adapter_path"),
        ("export", "--output_dir"),
    ],
)
def test_an_empty_path_is_refused(script, flag):
    assert refused(script, f"{flag}=").startswith(f"{flag} is empty, and it names a file or folder")


def test_an_empty_path_in_a_config_is_refused(tmp_path):
    (tmp_path / "sft.yaml").write_text('dataset_name: ""\n')
    assert refused("train_sft", "--config", tmp_path / "sft.yaml").startswith("--dataset_name is empty")


def test_config_flag_without_a_file_and_twice():
    assert "--config needs a YAML file" in refused("train_sft", "--tiny", "--config")
    assert "more than once" in refused("train_sft", "--config", "a.yaml", "--config=b.yaml")


@pytest.mark.parametrize("args", [["--config="], ["--config", ""]])
def test_an_empty_config_flag_is_refused_not_ignored(args):
    assert refused("train_sft", "--tiny", *args).startswith("--config is empty (an unset shell variable?)")


OUT_OF_RANGE = [
    ("train_sft", "per_device_train_batch_size", 0, ">= 1"),
    ("train_sft", "gradient_accumulation_steps", 0, ">= 1"),
    ("train_sft", "num_train_epochs", 0, "> 0"),
    ("train_sft", "learning_rate", -0.1, "> 0"),
    ("train_sft", "max_length", 0, ">= 1"),
    ("train_sft", "sft_fraction", 0, "in (0, 1]"),
    ("train_sft", "sft_fraction", 1.5, "in (0, 1]"),
    ("train_rm", "eval_fraction", 1, "in [0, 1)"),
    ("train_rm", "eval_fraction", -0.1, "in [0, 1)"),
    ("train_rm", "center_rewards_coefficient", -0.01, ">= 0"),
    ("train_ppo", "eval_fraction", 1, "in [0, 1)"),
    ("train_ppo", "response_length", 0, ">= 1"),
    ("train_ppo", "max_prompt_length", 0, ">= 1"),
    ("train_ppo", "num_ppo_epochs", 0, ">= 1"),
    ("train_ppo", "num_mini_batches", 0, ">= 1"),
    ("train_ppo", "local_rollout_forward_batch_size", 0, ">= 1"),
    ("train_ppo", "total_episodes", 0, ">= 1"),
    ("train_ppo", "temperature", 0, ">= 0.01"),
    ("train_ppo", "kl_coef", -0.1, "in [0, 1000]"),
    ("train_ppo", "cliprange", 0, "> 0"),
    ("train_ppo", "gamma", 1.5, "in [0, 1]"),
    ("train_ppo", "lam", -0.5, "in [0, 1]"),
    ("train_ppo", "lora_r", 0, ">= 1"),
    ("train_ppo", "lora_dropout", 1, "in [0, 1)"),
    ("eval_sft", "temperature", 0, ">= 0.01"),
    ("eval_sft", "top_p", 1.5, "in (0, 1]"),
    ("eval_sft", "max_new_tokens", 0, ">= 1"),
    ("eval_rm", "batch_size", 0, ">= 1"),
    ("eval_rm", "max_length", 0, ">= 1"),
    ("eval_ppo", "temperature", -1, ">= 0.01"),
    ("eval_ppo", "batch_size", 0, ">= 1"),
]


@pytest.mark.parametrize("script, name, value, expected", OUT_OF_RANGE)
def test_a_number_out_of_range_is_refused_naming_flag_and_value(script, name, value, expected):
    message = refused(script, "--tiny", f"--{name}", value)
    assert message.startswith(f"--{name} must be {expected}, got ")
    assert float(message.split("got ")[1].rstrip(".")) == value


def test_every_default_and_tiny_preset_is_in_range():
    for name, script in SCRIPTS.items():
        parse(script=script), parse("--tiny", script=script)  # would raise ArgumentError


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--metrics_file", "m.json"], "unknown flag --metrics_file"),
        (["--dataset_name", "data/sample.jsonl"], "unknown flag --dataset_name"),
        (["--dataset_name", "d.jsonl", "--metrics_file", "m.json"], "unknown flags --dataset_name and --metrics_file"),
    ],
)
def test_eval_ppo_refuses_the_comparisons_flags_in_the_chat(flags, named):
    """The comparison's own flags are compare.py's: eval_ppo.py, which only chats, does not know them."""
    with pytest.raises(errors.ArgumentError) as error:
        eval_ppo.main(*parse("--tiny", "--question", "hi", *flags, script=eval_ppo))
    assert str(error.value).startswith(named) and str(error.value).endswith(cli.HELP_HINT)


def test_ppo_needs_held_out_questions():
    with pytest.raises(errors.ArgumentError, match="--eval_fraction must be above 0"):
        train_ppo.main(*parse("--tiny", "--eval_fraction", "0", script=train_ppo))


def test_ppo_refuses_a_lora_dropout_its_eval_mode_would_never_apply():
    with pytest.raises(errors.ArgumentError, match="--lora_dropout 0.05: every model runs in eval mode"):
        train_ppo.main(*parse("--tiny", "--lora_dropout", "0.05", script=train_ppo))


@pytest.mark.skipif(runtime.bf16_available(), reason="this machine has a bf16 GPU")
@pytest.mark.parametrize("script", ["train_sft", "train_rm", "train_ppo"])
def test_bf16_without_a_bf16_gpu_is_refused(script):
    assert "--bf16 True needs a GPU with bf16 units" in refused(script, "--tiny", "--bf16", "True")


@pytest.mark.parametrize("stage", STAGES)
def test_tiny_with_a_config_of_the_real_run_names_the_keys_that_undo_it(stage, tmp_path):
    config = paths.ROOT / "configs" / f"{stage}.yaml"
    message = refused(f"train_{stage}", "--config", config, "--tiny")
    assert f"--config {config} sets " in message
    assert "dataset_name" in message and "model_source" in message
    assert "drop --tiny" in message and "remove those keys" in message

    # Doing what it says gives the tiny run with the file's other settings.
    undone = message.split(" sets ")[1].split(" to the real run")[0].replace(" and ", ", ").split(", ")
    kept = [line for line in config.read_text().splitlines() if line.split(":")[0] not in [*undone, "seed"]]
    trimmed = tmp_path / f"{stage}.yaml"
    trimmed.write_text("\n".join(kept + ["seed: 7"]) + "\n")
    script_args, config_args, *_ = parse("--config", str(trimmed), "--tiny", script=STAGES[stage])
    assert (script_args.model_source, script_args.dataset_name) == ("tiny", str(paths.SAMPLE_DATA))
    assert config_args.seed == 7


def test_argument_errors_exit_with_status_2_and_other_errors_with_1(capsys):
    with pytest.raises(SystemExit) as exit_info, lifecycle.user_errors():
        raise errors.ArgumentError("bad flag")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: bad flag\n"
    with pytest.raises(SystemExit) as exit_info, lifecycle.user_errors():
        raise errors.PipelineError("bad data")
    assert exit_info.value.code == 1 and capsys.readouterr().err == "error: bad data\n"


@pytest.mark.parametrize(
    "script, args, nearest",
    [
        ("train_ppo.py", ["--tiny", "--kl_coeff", "0.1"], "--kl_coef"),
        ("train_sft.py", ["--tiny", "--config", "typo.yaml"], "learning_rate"),
        ("eval_rm.py", ["--tiny", "--num_exmples", "2"], "--num_examples"),
    ],
)
def test_scripts_report_argument_errors_in_one_paragraph_with_status_2(tmp_path, script, args, nearest):
    (tmp_path / "typo.yaml").write_text("lerning_rate: 1.0e-4\n")
    result = run_script(script, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert f"did you mean {nearest}" in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
