"""PPO runs: train_ppo.main on the session's tiny models (identity at the start, learning on a programmatic
reward, --from_base, evaluation during training), its saves and resuming, train_ppo.py --tiny and eval_ppo.py's
chat end to end, and the errors before any model loads. PPO's pieces on their own: tests/test_ppo_algorithm.py."""

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

import common
import compare
import train_ppo
from conftest import LIBRARY_NOISE, ppo_args, run_main
from hfppo import charts, checkpoints, errors, paths, ppo_monitor, ppo_saves, ppo_setup

EVAL_QUESTIONS = train_ppo.PPOConfig.num_eval_questions  # the default: every held-out question of the tiny preset
TRL_METRICS = [
    "objective/scores", "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
    "val/ratio", "val/num_eos_tokens", "lr", "episode", "time/generation", "time/scoring", "time/optimization",
]  # fmt: skip


def run_ppo(workdir, sft_run, tiny_base, *args, reward_fn=None, monkeypatch):
    """train_ppo.main in `workdir` on the session's tiny SFT model, critic from the tiny base; its scalars. No
    evaluation on held-out questions unless `args` ask for it (--num_eval_questions): it leaves training as it is (a
    test checks that) and would add a fifth to each run."""
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)
    models = ("--sft_model_path", sft_run / paths.SFT_DIR, "--value_model_path", tiny_base)
    train_ppo.main(
        *ppo_args(*models, "--num_eval_questions", 0, *args),
        reward_fn=reward_fn,
    )
    (run_dir,) = (workdir / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    return charts.read_scalars(run_dir)


# ----------------------------------------------------------------------------------------------------------------
# Identity at the start, learning and evaluation, on the tiny SFT model


def test_the_first_update_starts_at_kl_0_and_ratio_1(tmp_path, sft_run, tiny_base, monkeypatch):
    """One update, one PPO epoch, one minibatch: every minibatch statistic is taken before the optimizer step."""
    scalars = run_ppo(
        tmp_path, sft_run, tiny_base, "--total_episodes", 16, "--num_ppo_epochs", 1, "--num_mini_batches", 1,
        "--gradient_accumulation_steps", 2, reward_fn=lambda queries, answers: torch.ones(len(answers)),
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert [step for step, _ in scalars["objective/kl"]] == [1]
    assert abs(scalars["objective/kl"][0][1]) < 1e-3  # summed over each answer's tokens
    assert scalars["policy/approxkl_avg"][0][1] < 1e-9
    assert scalars["policy/clipfrac_avg"][0][1] == 0
    assert scalars["val/ratio"][0][1] == pytest.approx(1, abs=1e-5)
    assert scalars["policy/grad_norm"][0][1] > 0 and scalars["val/grad_norm"][0][1] > 0  # each model's, logged
    # policy/entropy_avg is the entropy of what was sampled: near the sampled estimate, -log pi per answer token
    sampled = scalars["objective/entropy"][0][1] / scalars["val/answer_length"][0][1]
    assert scalars["policy/entropy_avg"][0][1] == pytest.approx(sampled, abs=0.5), (
        scalars["policy/entropy_avg"],
        sampled,
    )


def test_ppo_raises_a_programmatic_reward(tmp_path, sft_run, tiny_base, monkeypatch):
    """+1 for each "？" in the answer: the SFT model writes about 0.2 per answer; PPO must make it several."""
    tokenizer = AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)

    def question_marks(queries, answers):
        return torch.tensor([tokenizer.decode(answer).count("？") for answer in answers], dtype=torch.float)

    scalars = run_ppo(tmp_path, sft_run, tiny_base, reward_fn=question_marks, monkeypatch=monkeypatch)
    scores = [value for _, value in scalars["objective/scores"]]
    fifth = len(scores) // 5
    first, last = sum(scores[:fifth]) / fifth, sum(scores[-fifth:]) / fifth
    assert first < 1 and last > first + 2, scores


def test_the_judge_does_not_follow_a_reward_it_disagrees_with(tmp_path, sft_run, tiny_base, monkeypatch, capsys):
    """A programmatic reward for brevity, -1 per 10 characters, which the lexicon judge does not share: PPO raises it
    on the held-out questions (eval/score, the proxy) while the judge's verdict does not rise but falls, since short
    answers hold fewer put-downs. Measured here: the judge's mean fell from +0.29 to +0.03 (seed 42, 2-core AMD EPYC,
    after the shared held-out split; +2.43 to +0.11 on the earlier, leakier split)."""
    tokenizer = AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)

    def brevity(queries, answers):
        return torch.tensor([-len(tokenizer.decode(answer, skip_special_tokens=True)) / 10 for answer in answers])

    # evaluated before the first update and after the last (the 20th)
    evaluation = ("--num_eval_questions", EVAL_QUESTIONS, "--eval_steps", 20)
    scalars = run_ppo(tmp_path, sft_run, tiny_base, *evaluation, reward_fn=brevity, monkeypatch=monkeypatch)
    (first, proxy), (last, final_proxy) = scalars["eval/score"][0], scalars["eval/score"][-1]
    assert (first, last) == (0, 20)
    judge, rude = scalars["eval/judge_score"], scalars["eval/judged_rude"]
    assert final_proxy > proxy + 0.8, scalars["eval/score"]
    assert judge[-1][1] < judge[0][1] and rude[-1][1] <= rude[0][1], (judge, rude)
    # and the alarm says so: the proxy up while the judge is not, at the last evaluation, not at the first
    assert [signs for _, signs in scalars["eval/hacking_signs"]][0] == 0 and scalars["eval/hacking_signs"][-1][1] >= 1
    printed = capsys.readouterr()
    assert "Reward hacking? Against the policy before training: the reward model's score rose" in printed.out


def test_from_base_trains_an_adapter_on_the_base_model_into_its_own_folder(tmp_path, sft_run, tiny_base, monkeypatch):
    """--from_base: the policy and its reference start from the base model, not the SFT model (which is not even
    read), the run writes checkpoint/ppo_base and tensorboard/ppo_base, so it never overwrites the PPO run it is
    compared with, and compare.py finds it as the ppo_base method."""
    monkeypatch.chdir(tmp_path)
    flags = ("--from_base", "--base_model_path", tiny_base)  # and no checkpoint/sft in tmp_path
    flags += ("--value_model_path", tiny_base, "--num_eval_questions", 0, "--total_episodes", 32)
    train_ppo.main(*ppo_args(*flags), reward_fn=lambda queries, answers: torch.zeros(len(answers)))
    adapter = tmp_path / paths.PPO_BASE_DIR
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_base)
    assert not (tmp_path / paths.PPO_DIR).exists()
    (run_dir,) = (tmp_path / paths.TENSORBOARD_ROOT / "ppo_base").iterdir()
    first_kl = charts.read_scalars(run_dir)["objective/kl"][0][1]
    assert abs(first_kl) < 1e-4  # the reference is the base itself: the adapter starts at zero
    assert (run_dir / "ppo_base.png").is_file()
    results = json.loads((adapter / paths.TRAIN_RESULTS_FILE).read_text())
    assert results["train_runtime"] > 0 and results["train_samples_per_second"] > 0
    found, missing = common.find_policies(
        {name: getattr(compare.CompareArguments(), flag) for name, flag in compare.POLICY_FLAGS.items()}, tiny=True
    )
    assert list(found) == ["ppo_base"] and missing["sft"] == "python train_sft.py --tiny"


def test_evaluation_leaves_training_bitwise_alike(tmp_path, sft_run, tiny_base, monkeypatch):
    """Evaluating after every update (sampling from a fork of the RNG, the adapter unmerged) ends with bitwise the
    weights of a run that never evaluates; and each evaluation logs eval/* and a table of sample answers."""
    tokenizer = AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)

    def answer_length(queries, answers):
        return torch.tensor([len(tokenizer.decode(answer)) / 10 for answer in answers])

    runs = {"every": ("--num_eval_questions", EVAL_QUESTIONS, "--eval_steps", 1), "never": ()}
    scalars = {
        name: run_ppo(
            tmp_path / name, sft_run, tiny_base, "--total_episodes", 48, *flags, reward_fn=answer_length,
            monkeypatch=monkeypatch,
        )
        for name, flags in runs.items()
    }  # fmt: skip
    for tag in (
        "eval/score",
        "eval/judge_score",
        "eval/judged_rude",
        "eval/kl",
        "eval/answer_length",
        "eval/finished",
        "eval/hacking_signs",
        *(bound for tag in ppo_monitor.INTERVAL_TAGS for bound in charts.band_tags(tag)),
    ):
        assert [step for step, _ in scalars["every"][tag]] == [0, 1, 2, 3], tag
    for tag in ppo_monitor.INTERVAL_TAGS:  # each evaluation's 95% interval holds its mean
        lows, highs = (scalars["every"][bound] for bound in charts.band_tags(tag))
        assert all(low <= mean <= high for (_, low), (_, mean), (_, high) in zip(lows, scalars["every"][tag], highs))
    assert not [tag for tag in scalars["never"] if tag.startswith("eval/")]
    assert scalars["every"]["eval/kl"][0][1] == pytest.approx(0, abs=1e-6)  # the SFT model itself, before training
    assert scalars["every"]["eval/kl"][-1][1] > 0
    for part in ("adapter_model.safetensors", "value/model.safetensors"):
        every, never = (load_file(tmp_path / name / paths.PPO_DIR / part) for name in runs)
        assert every.keys() == never.keys()
        assert all(torch.equal(every[key], never[key]) for key in every), part

    (run_dir,) = (tmp_path / "every" / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("eval/samples/text_summary")
    assert [event.step for event in texts] == [0, 1, 2, 3]
    table = texts[-1].tensor_proto.string_val[0].decode().splitlines()
    assert table[0] == "| question | answer | score | judge |" and len(table) == 2 + ppo_monitor.EVAL_SAMPLES
    held_out = common.load_preference_data(tmp_path / "every" / paths.PPO_DIR / paths.HELD_OUT_FILE)
    assert table[2].startswith(f"| {held_out[0]['question']} | ")


# ----------------------------------------------------------------------------------------------------------------
# Resuming, saving, and the room a run's saves need


def test_a_resumed_run_continues_where_the_checkpoint_left_off(tmp_path, sft_run, tiny_base, monkeypatch, caplog):
    """Four updates with a checkpoint after two; resuming from it ends with the same weights as the whole run, and
    continues the whole run's TensorBoard run: every update logged once, updates 3 and 4 replaced by the resumed
    run's."""
    tokenizer = AutoTokenizer.from_pretrained(sft_run / paths.SFT_DIR)

    def answer_length(queries, answers):
        return torch.tensor([len(tokenizer.decode(answer)) / 10 for answer in answers])

    schedule = ("--total_episodes", 64, "--save_steps", 2)
    whole = run_ppo(
        tmp_path, sft_run, tiny_base, *schedule, "--output_dir", tmp_path / "whole" / "ppo",
        reward_fn=answer_length, monkeypatch=monkeypatch,
    )  # fmt: skip
    checkpoint = tmp_path / "whole" / "ppo" / "checkpoint-2"
    progress = json.loads((checkpoint / ppo_saves.TRAINING_STATE_DIR / ppo_saves.PROGRESS_FILE).read_text())
    (run_dir,) = (tmp_path / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    assert progress == {
        "batch_size": 16, "num_updates": 4, "processes": 1, "update": 2,
        "tensorboard_run": str(run_dir.relative_to(tmp_path)),
    }  # fmt: skip
    assert not (tmp_path / "whole" / "ppo" / "checkpoint-4").exists()  # the last update is the final save
    # accelerate's note that the tied LM head was left out of the saved state is filtered (train_ppo.py)
    assert "Removed shared tensor" not in caplog.text

    resumed = run_ppo(
        tmp_path, sft_run, tiny_base, *schedule, "--output_dir", tmp_path / "resumed" / "ppo",
        "--resume_from_checkpoint", checkpoint, reward_fn=answer_length, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert (run_dir / "ppo.png").is_file()  # redrawn over the whole run
    assert "Purging expired events" not in caplog.text  # TensorBoard's reader on the purge we asked for
    for tag in ("lr", "episode", "objective/scores", "loss/value_avg"):
        assert [step for step, _ in resumed[tag]] == [1, 2, 3, 4]
        assert resumed[tag][:2] == whole[tag][:2]
        assert [value for _, value in resumed[tag][2:]] == pytest.approx(
            [value for _, value in whole[tag][2:]], abs=1e-6
        )
    # Within rounding: generation merges and unmerges the adapter, which moves the whole run's base weights by an
    # fp32 ulp or so, while the resumed run reloads them exactly. An optimizer state lost on resume would show as a
    # difference of about the learning rate (Adam's first step), 3e-3 here.
    for part in ("adapter_model.safetensors", "value/model.safetensors"):
        finals = [load_file(tmp_path / run / "ppo" / part) for run in ("whole", "resumed")]
        assert finals[0].keys() == finals[1].keys()
        for key in finals[0]:
            torch.testing.assert_close(finals[0][key], finals[1][key], rtol=0, atol=1e-5)


def test_resuming_needs_a_training_state_and_the_same_schedule(tmp_path, sft_run, tiny_base, monkeypatch):
    run_ppo(
        tmp_path / "run", sft_run, tiny_base, "--total_episodes", 48, "--save_steps", 1,
        reward_fn=lambda queries, answers: torch.zeros(len(answers)), monkeypatch=monkeypatch,
    )  # fmt: skip
    final = tmp_path / "run" / paths.PPO_DIR
    assert sorted(path.name for path in final.glob("checkpoint-*")) == ["checkpoint-2"]  # save_total_limit 1
    with pytest.raises(errors.PipelineError, match="holds no training state"):
        train_ppo.main(*ppo_args("--resume_from_checkpoint", final))
    with pytest.raises(errors.PipelineError, match=r"3 updates of 16 answers on 1 process\(es\); this one has 4"):
        train_ppo.main(*ppo_args("--resume_from_checkpoint", final / "checkpoint-2", "--total_episodes", 64))


def test_saving_over_a_checkpoint_replaces_its_critic_and_keeps_periodic_ones(tmp_path):
    checkpoint = tmp_path / "ppo"
    for version in ("old", "new"):
        with checkpoints.staged_save(checkpoint) as staging:
            (staging / ppo_saves.VALUE_DIR).mkdir(parents=True)
            (staging / ppo_saves.VALUE_DIR / "config.json").write_text(version)
            (staging / "adapter_config.json").write_text(version)
        (checkpoint / "checkpoint-3").mkdir(exist_ok=True)
    assert (checkpoint / ppo_saves.VALUE_DIR / "config.json").read_text() == "new"
    assert (checkpoint / "adapter_config.json").read_text() == "new"
    assert (checkpoint / "checkpoint-3").is_dir() and not checkpoints.sibling(checkpoint, checkpoints.PARTIAL).exists()


def test_the_room_check_counts_what_a_periodic_save_writes(tmp_path):
    """The estimate from the models' weight headers (nothing loaded) against the bytes an actual periodic save
    writes: the adapter, the critic, accelerate's state with AdamW's moments after a step, and the tokenizer copies.
    Within a tenth: small files (random states, configs) are the difference, a share that shrinks with the model."""
    shape = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    folder = tmp_path / "sft"
    AutoModelForCausalLM.from_config(shape).save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}" * 2000)  # a stand-in the save copies, as a tokenizer's files
    config = train_ppo.PPOConfig(lora_r=4)
    inputs = ppo_setup.Inputs(str(folder), "the SFT model", "x", str(folder), "x", "", "")

    class Tokenizer:
        def save_pretrained(self, where):
            shutil.copy(folder / "tokenizer.json", where)

    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        LoraConfig(r=config.lora_r, target_modules=config.lora_target_modules, task_type="CAUSAL_LM"),
    )
    model = train_ppo.PolicyAndValue(policy, ppo_setup.load_critic(str(folder)))
    optimizer = train_ppo.make_optimizer(policy, model.critic, config)
    for parameter in (p for p in model.parameters() if p.requires_grad):
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # AdamW's moments exist from the first step
    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    saved = tmp_path / "ppo" / "checkpoint-1"
    ppo_saves.save_checkpoint(saved, accelerator, model, Tokenizer(), progress={"update": 1}, settings={})
    written = sum(file.stat().st_size for file in saved.rglob("*") if file.is_file())
    estimate = ppo_saves.periodic_save_bytes(inputs, config)
    assert written * 0.9 <= estimate <= written * 1.1, (estimate, written)
    # Ten updates saved every two: periodic saves after updates 2, 4, 6 and 8 (the tenth is the final save).
    final = ppo_saves.final_save_bytes(inputs, config)
    for limit, start, held in [(1, 0, 2), (0, 0, 4), (0, 4, 2), (3, 6, 1)]:
        config = train_ppo.PPOConfig(lora_r=4, save_steps=2, save_total_limit=limit)
        assert ppo_saves.run_save_bytes(inputs, config, 10, start) == held * estimate + final, (limit, start)


# ----------------------------------------------------------------------------------------------------------------
# End to end: SFT -> RM -> PPO (the comparison of every method: tests/test_compare.py)


def test_the_run_logged_trls_metrics_saved_adapter_critic_and_chart(ppo_run):
    (run_dir,) = (ppo_run / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    scalars = charts.read_scalars(run_dir)
    assert set(TRL_METRICS) <= set(scalars)
    assert [step for step, _ in scalars["episode"]] == list(range(1, 21))  # 310 questions, batches of 16
    # evaluated on the 35 held-out questions before training, every 5 updates (--eval_steps 0.25) and at the end
    assert [step for step, _ in scalars["eval/judge_score"]] == list(range(0, 21, 5))
    assert "eval at update 20: score" in (ppo_run / "train.out").read_text()
    assert scalars["loss/value_avg"][-1][1] < scalars["loss/value_avg"][0][1]  # the critic learned
    checkpoint = checkpoints.require_checkpoint(ppo_run / paths.PPO_DIR, "")
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "config.json").exists()
    checkpoints.require_checkpoint(checkpoint / ppo_saves.VALUE_DIR, "")
    assert common.load_preference_data(checkpoint / paths.HELD_OUT_FILE).num_rows == 35
    assert (run_dir / "ppo.png").read_bytes().startswith(b"\x89PNG")
    assert not (ppo_run / "imgs").exists()


def test_ppo_prints_no_library_noise(ppo_run):
    """The messages train_ppo.py filters or explains (README, "Messages you will not see") stay out."""
    train_err = (ppo_run / "train.err").read_text()
    for noise in LIBRARY_NOISE:
        assert noise not in train_err, noise
    assert "plus a new score head (score.weight), randomly initialised" in (ppo_run / "train.out").read_text()


def test_eval_ppo_answers_questions_from_flags_and_stdin(ppo_run, sft_run):
    sft = ("--sft_model_path", sft_run / paths.SFT_DIR)
    result = run_main("eval_ppo.py", "--tiny", *sft, "--question", "吃了没?", cwd=ppo_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("输入问题:吃了没?\n---模型输出---\n") and len(result.stdout.splitlines()) == 3
    result = run_main("eval_ppo.py", "--tiny", *sft, cwd=ppo_run, stdin="你是谁?\n你是谁?\n")
    first, second = result.stdout.split("输入问题:你是谁?\n---模型输出---\n")[1:]
    assert first != second  # one random stream for the whole chat, not the same seed for every question


def test_eval_ppo_refuses_an_adapter_on_another_sft_model(ppo_run, tiny_base):
    result = run_main("eval_ppo.py", "--tiny", "--sft_model_path", tiny_base, "--question", "x", cwd=ppo_run)
    assert result.returncode == 1
    assert "was trained on" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# The models each mode reads, checked before any loads


def test_train_ppo_without_an_sft_model_says_what_to_run(tmp_path):
    result = run_main("train_ppo.py", "--tiny", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no model at checkpoint/sft" in result.stderr and "python train_sft.py --tiny" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--from_base", "--sft_model_path", "mine"],
            "--sft_model_path mine does nothing with --from_base: the policy and its reference start from "
            "--base_model_path, and no SFT model is read. Drop --sft_model_path, or drop --from_base.",
        ),
        (
            ["--base_model_path", "mine"],
            "--base_model_path mine does nothing without --from_base: the policy and its reference start from the SFT "
            "model (--sft_model_path), and the critic from --value_model_path. Drop --base_model_path, or add "
            "--from_base.",
        ),
    ],
)
def test_a_model_flag_the_mode_does_not_read_is_refused_naming_the_mode(tmp_path, flags, message):
    result = run_main("train_ppo.py", "--tiny", *flags, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("from_base", [[], ["--from_base"]])
def test_a_config_file_may_name_the_models_of_both_modes(tmp_path, from_base):
    """One file serves PPO and PPO from the base (configs/cpu/ppo.yaml): its keys are not flags the user typed."""
    config = tmp_path / "ppo.yaml"
    config.write_text("sft_model_path: mine/sft\nbase_model_path: mine/base\n")
    script_args, ppo_config = ppo_args("--config", config, *from_base)
    ppo_setup.check_arguments(script_args, ppo_config)
    assert (script_args.sft_model_path, script_args.base_model_path) == ("mine/sft", "mine/base")


def test_a_missing_critic_folder_under_tiny_is_refused_not_built(tmp_path):
    """--tiny builds its own base in its own folder only: a mistyped --value_model_path is no new critic."""
    fake_model(tmp_path / paths.SFT_DIR, "Qwen2ForCausalLM", {"lm_head.weight": torch.ones(4)})
    fake_model(tmp_path / paths.RM_DIR, "Qwen2ForSequenceClassification", {"score.weight": torch.ones(1, 4)})
    result = run_main("train_ppo.py", "--tiny", "--value_model_path", "my_rm", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (
        "--value_model_path my_rm: there is no model there, and the tiny preset builds its base model only in its own "
        f"folder, {paths.TINY_BASE_DIR}, never at a path given. Pass a folder that holds a model, or leave "
        "--value_model_path unset for the tiny base."
    ) in result.stderr
    assert not (tmp_path / "my_rm").exists() and not (tmp_path / paths.TINY_BASE_DIR).exists()


def fake_model(folder, architecture: str, weights: dict) -> None:
    """A model folder as require_checkpoint sees one: config, weights, tokenizer config."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    save_file(weights, folder / "model.safetensors")
    (folder / "tokenizer_config.json").write_text("{}")
