"""Every hyperparameter comes from one place: dataclass defaults < --tiny preset < --config YAML < command line."""

import dataclasses

import pytest

import common
import eval_rm
import eval_sft
import train_ppo
import train_rm
import train_sft

STAGES = {"sft": train_sft, "rm": train_rm, "ppo": train_ppo}


def parse(*args, script=train_sft):
    return common.parse_args(script.make_parser(), script.TINY_PRESET, list(args))


def test_real_defaults_mirror_the_original_run():
    script_args, training_args, model_args = parse()
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert script_args.dataset_name == "jackmokaka/btfChinese-DPO-small"
    assert script_args.sft_fraction == 0.1
    assert (training_args.num_train_epochs, training_args.learning_rate, training_args.max_length) == (2, 1e-5, 500)
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 32
    assert training_args.bf16 is common.bf16_available()  # TRL's own default is bf16=True, even on a CPU


def test_tiny_preset_then_config_then_flags(tmp_path):
    script_args, training_args, model_args = parse("--tiny")
    assert (model_args.model_name_or_path, script_args.model_source) == (str(common.TINY_BASE_DIR), "tiny")
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
    config = common.ROOT / "configs" / f"{stage}.yaml"
    assert fields(parse("--config", str(config), script=script)) == fields(parse(script=script))


def test_rm_defaults_mirror_the_original_run():
    script_args, training_args, model_args = parse(script=train_rm)
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"  # the base, not the SFT model
    assert (training_args.num_train_epochs, training_args.learning_rate, training_args.max_length) == (2, 1e-5, 500)
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 32
    assert training_args.center_rewards_coefficient == 0.01
    assert script_args.eval_fraction == 0.1
    assert training_args.bf16 is common.bf16_available()


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
    (args,) = common.parse_args(
        eval_sft.make_parser(), eval_sft.TINY_PRESET, ["--question", "a", "b", "--question", "c"]
    )
    assert args.question == ["a", "b", "c"]
    (args,) = common.parse_args(eval_sft.make_parser(), eval_sft.TINY_PRESET, ["--tiny"])
    assert args.max_new_tokens == eval_sft.TINY_PRESET["max_new_tokens"]


def test_eval_rm_answer_flag_repeats_alongside_question():
    (args,) = eval_rm.make_parser().parse_args_and_config(["--question", "a", "--answer", "x", "--question", "b"])
    assert (args.question, args.answer) == (["a", "b"], ["x"])
    with pytest.raises(common.PipelineError, match="one --answer per --question"):
        eval_rm.main(args)


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_bad_sft_fraction_is_refused_before_any_work(fraction):
    with pytest.raises(common.PipelineError, match="--sft_fraction"):
        train_sft.main(*parse("--tiny", "--sft_fraction", fraction))


@pytest.mark.parametrize("fraction", ["-0.1", "1"])
def test_bad_eval_fraction_is_refused_before_any_work(fraction):
    with pytest.raises(common.PipelineError, match="--eval_fraction"):
        train_rm.main(*parse("--tiny", "--eval_fraction", fraction, script=train_rm))


@pytest.mark.parametrize("flag", [("--eval_fraction", "0"), ("--eval_fraction", "1"), ("--temperature", "0")])
def test_bad_ppo_flags_are_refused_before_any_work(flag):
    with pytest.raises(common.PipelineError, match=flag[0]):
        train_ppo.main(*parse("--tiny", *flag, script=train_ppo))
