"""Several processes: every accelerate config loads, and each training script under `accelerate launch` with
configs/accelerate/ddp.yaml on two CPU processes (gloo) trains as one process with the same global batch does."""

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import train_ppo
from conftest import run_ok
from hfppo import charts, checkpoints, cli, errors, paths

ACCELERATE_CONFIGS = paths.ROOT / "configs" / "accelerate"
CONFIG_TYPES = {
    "ddp": DistributedType.MULTI_GPU,
    "zero2": DistributedType.DEEPSPEED,
    "zero3": DistributedType.DEEPSPEED,
    "fsdp": DistributedType.FSDP,
}
# Two processes against one: the same rows in the same global batches from the same weights, so the runs differ by
# rounding alone: each process pads its half to its own longest row and the halves' gradients are all-reduced, which
# adds the same numbers in another order (and in another order again on a CPU with other vector units). How far a run
# carries that rounding depends on the machine: over 126 SFT steps the losses stayed within 3e-5 on an AVX2 EPYC and
# parted by up to 0.017 on an AVX-512 EPYC. So the runs are compared step by step only over their first steps, before
# rounding can grow, and as whole runs by what they learned.
# 4: steps 1 and 2 run on the starting weights (the warm-up's first learning rate is 0), 3 and 4 after small updates.
TIGHT_STEPS = 4
# 1e-4 is ~200 fp32 ulps of an SFT loss near 8 (measured: at most 2, with MKL and ATen forced to SSE4.2 kernels too);
# processes that never all-reduce their gradients miss at step 3 by 1.8e-2 (SFT loss) and 1.3e-3 (reward model loss).
STEP_TOLERANCE = 1e-4
# The whole run: the mean of the last LAST_STEPS steps' values, and the last held-out evaluation.
LAST_STEPS = 20
# Each band is 4 times the largest difference between single-process runs with seeds 1, 2 and 42 (another data order,
# and for the reward model another random score head; the held-out pairs are the shared split's) of these runs'
# length (RUN_EPOCHS): about 5 standard deviations of the difference of two runs, so two processes pass wherever
# rounding carries them, as long as they land where another seed could. A missing all-reduce is the stepwise check's
# to catch (step 3, above). Measured on the EPYC:
WHOLE_RUN_BANDS = {
    "sft": {
        "train/loss": 0.1,  # seeds: 5.307 to 5.330
        "train/mean_token_accuracy": 0.016,  # seeds: 0.1509 to 0.1549
    },
    "rm": {
        "train/loss": 0.28,  # seeds: 0.033 to 0.102 (0.69 before learning)
        "train/margin": 5.0,  # seeds: 4.66 to 5.91
        "eval/loss": 0.57,  # seeds: 0.218 to 0.360
        "eval/accuracy": 0.75,  # seeds: 0.781 to 0.969 of its 32 pairs (seed 2 the lowest)
        "eval/margin": 6.4,  # seeds: 2.75 to 4.35
    },
}
# SFT for 2 epochs rather than the tiny preset's 6 (38 steps of 8 rows rather than 114: the bands above still tell
# learning apart, and the test takes a third of the time); the reward model for 2 rather than its preset's 4 (76
# steps rather than 152).
RUN_EPOCHS = {"sft": 2, "rm": 2}


def launch(script: str, *args, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml` of a pipeline script on CPU processes (gloo).

    Not `accelerate launch --cpu`: in accelerate 1.15 that starts one process (its CPU launcher spreads processes only
    through mpirun). The multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU, the variable --cpu sets, starts them.
    """
    with socket.socket() as probe:  # a free port for the processes to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = (
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIGS / "ddp.yaml",
        "--num_processes", processes, "--mixed_precision", "no", "--main_process_port", port,
    )  # fmt: skip
    return run_ok(script, *args, cwd=cwd, launcher=launcher, env=os.environ | {"ACCELERATE_USE_CPU": "true"})


def outputs(workdir: Path, stage: str) -> dict:
    """What a run left in `workdir`: its checkpoints, TensorBoard runs (and their scalars) and charts (in the run)."""
    runs = sorted((workdir / paths.TENSORBOARD_ROOT / stage).iterdir())
    return {
        "checkpoints": sorted(  # without the .<folder>.lock a run holds beside each folder it writes
            path.name
            for path in (workdir / paths.CHECKPOINT_ROOT).iterdir()
            if not path.name.endswith(checkpoints.LOCK)
        ),
        "tensorboard_runs": len(runs),
        "charts": sorted(path.name for path in runs[0].glob("*.png")),
        "scalars": charts.read_scalars(runs[0]),
    }


def values(scalars: dict, tag: str) -> list[float]:
    return [value for _, value in scalars[tag]]


@pytest.mark.parametrize("name", sorted(CONFIG_TYPES))
def test_every_accelerate_config_loads_and_says_when_to_pick_it(name):
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == CONFIG_TYPES[name]
    assert path.read_text().startswith("# ") and "pick it" in path.read_text().splitlines()[0]
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":  # save_model must write an ordinary checkpoint the next stage can load
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_the_configs_folder_holds_exactly_the_documented_configs():
    assert sorted(path.stem for path in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(CONFIG_TYPES)


@pytest.mark.parametrize(
    ("script", "stage", "stepwise"),
    [("train_sft.py", "sft", ["train/loss"]), ("train_rm.py", "rm", ["train/loss", "train/margin"])],
)
def test_two_processes_train_as_one_with_the_same_global_batch(script, stage, stepwise, tiny_base, tmp_path):
    """8 rows per step: 8 on one process, 4 on each of two. The last, partial batch of an epoch is dropped in both
    runs: two processes would fill it up with repeated rows (accelerate's even_batches) where one process does not."""
    args = ("--tiny", "--model_name_or_path", tiny_base, "--dataloader_drop_last", "true")
    args += ("--num_train_epochs", RUN_EPOCHS[stage])
    run_ok(script, *args, "--per_device_train_batch_size", 8, cwd=tmp_path / "one")
    launch(script, *args, "--per_device_train_batch_size", 4, cwd=tmp_path / "two")

    one, two = outputs(tmp_path / "one", stage), outputs(tmp_path / "two", stage)
    assert two["checkpoints"] == [stage] and two["tensorboard_runs"] == 1 and two["charts"] == [f"{stage}.png"]
    # Tokens seen per step, summed over the processes: the same rows, none twice and none left out.
    assert values(two["scalars"], "train/num_tokens") == values(one["scalars"], "train/num_tokens")
    for tag in stepwise:  # continuous values only: token accuracy counts argmaxes, and rounding can flip a near tie
        first = [values(run["scalars"], tag)[:TIGHT_STEPS] for run in (one, two)]
        assert first[1] == pytest.approx(first[0], abs=STEP_TOLERANCE), tag
    for tag, tolerance in WHOLE_RUN_BANDS[stage].items():
        series = [values(run["scalars"], tag) for run in (one, two)]
        # train/ is logged at every step, eval/ at ten held-out evaluations over the run
        learned = [run[-1] if tag.startswith("eval/") else sum(run[-LAST_STEPS:]) / LAST_STEPS for run in series]
        assert learned[1] == pytest.approx(learned[0], abs=tolerance), tag
    if stage == "rm":
        held_out = [(tmp_path / run / paths.RM_DIR / paths.HELD_OUT_FILE).read_text() for run in ("one", "two")]
        assert held_out[0] == held_out[1]


# ----------------------------------------------------------------------------------------------------------------
# PPO: the pieces that make the processes one batch, then train_ppo.py on two processes

# PPO samples its answers, and each process draws from its own stream (seed + process index), so two processes
# answer the same prompts with other samples than one process does, even from the same weights: the runs agree in
# distribution, not number by number. Over single-process runs with seeds 1, 2, 3 and 42 the mean score over the run
# spanned 1.94 to 1.99 and the mean KL to the reference over the second half 1.03 to 1.56. Four draws span about 2
# standard deviations, so the difference of two runs has a standard deviation of about 0.035 in score and 0.3 in log
# KL. Each band is about 4 of those: whatever a CPU's rounding does, a run that learns passes, and a run that did not
# learn, or a score summed over the processes where the mean belongs, fails.
PPO_SCORE_TOLERANCE = 0.15  # 4.3 standard deviations of the difference in mean score
PPO_KL_FACTOR = 3  # ln 3 = 1.1: 3.9 standard deviations of the difference in log KL
# Before the first step the policy is the SFT model (LoRA's B starts at 0), so its KL to the reference is 0 up to
# rounding; summed over an answer's tokens, 1e-3 is what test_ppo.py allows one process.
PPO_START_KL = 1e-3


def fake_accelerator(num_processes: int, process_index: int):
    return type("Process", (), {"num_processes": num_processes, "process_index": process_index})


def test_the_processes_answer_each_prompt_of_an_update_once():
    order = train_ppo.PromptOrder(50, seed=0)
    for update in range(5):
        shares = [train_ppo.process_share(order, update, 12, fake_accelerator(3, i)) for i in range(3)]
        alone = train_ppo.process_share(order, update, 12, fake_accelerator(1, 0))
        assert torch.cat(shares).tolist() == alone.tolist() and len(set(alone.tolist())) == 12


def test_advantages_are_whitened_over_every_process_s_answers_together():
    """Two threads stand in for two processes, with an all-reduce sum between them."""
    torch.manual_seed(0)
    values = torch.randn(4, 6) * 3 + 1
    mask = (torch.arange(6) < torch.tensor([6, 2, 5, 1])[:, None]).float()
    halves = [(values[:2], mask[:2]), (values[2:], mask[2:])]
    barrier, totals, whitened = threading.Barrier(2), [None, None], [None, None]

    def process(rank: int) -> None:
        def all_sum(total: torch.Tensor) -> torch.Tensor:
            totals[rank] = total
            barrier.wait()
            summed = totals[0] + totals[1]
            barrier.wait()
            return summed

        whitened[rank] = train_ppo.masked_whiten(*halves[rank], all_sum)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = train_ppo.masked_whiten(values, mask)
    torch.testing.assert_close(torch.cat(whitened), whole)
    per_process = torch.cat([train_ppo.masked_whiten(*half) for half in halves])
    assert (per_process - whole).abs().max() > 0.1  # the split would show, were each half whitened alone


def ppo_models(sft_run, rm_run, tiny_base) -> tuple:
    return (
        "--sft_model_path", sft_run / paths.SFT_DIR, "--reward_model_path", rm_run / paths.RM_DIR,
        "--value_model_path", tiny_base,
    )  # fmt: skip


def test_ppo_on_two_processes_learns_as_one_with_the_same_global_batch(ppo_run, sft_run, rm_run, tiny_base, tmp_path):
    """16 answers per update: 16 on one process (ppo_run), 8 on each of two."""
    models = ppo_models(sft_run, rm_run, tiny_base)
    launch("train_ppo.py", "--tiny", *models, "--per_device_train_batch_size", 4, cwd=tmp_path)

    one, two = outputs(ppo_run, "ppo"), outputs(tmp_path, "ppo")
    assert two["checkpoints"] == ["ppo"] and two["tensorboard_runs"] == 1 and two["charts"] == ["ppo.png"]
    assert not list((tmp_path / paths.PPO_DIR).glob(f"{train_ppo.CHECKPOINT_PREFIX}*"))
    for tag in ("episode", "lr"):  # the schedule is the global batch's
        assert values(two["scalars"], tag) == pytest.approx(values(one["scalars"], tag))
    assert abs(values(two["scalars"], "objective/kl")[0]) < PPO_START_KL  # both processes start from the SFT model
    assert max(values(two["scalars"], "val/num_eos_tokens")) > 8  # counted over both processes' answers
    scores = [sum(values(run["scalars"], "objective/scores")) / 20 for run in (one, two)]
    assert scores[1] == pytest.approx(scores[0], abs=PPO_SCORE_TOLERANCE)
    kl = [sum(values(run["scalars"], "objective/kl")[10:]) / 10 for run in (one, two)]
    assert kl[0] / PPO_KL_FACTOR < kl[1] < kl[0] * PPO_KL_FACTOR


def test_ppo_on_two_processes_resumes_where_it_left_off(sft_run, rm_run, tiny_base, tmp_path, monkeypatch):
    """Four updates with a checkpoint after two; resuming from it, each process restores its own random stream and
    samples the answers the whole run sampled, so both end with the same weights."""
    args = ("--tiny", *ppo_models(sft_run, rm_run, tiny_base), "--per_device_train_batch_size", 4)
    # No held-out evaluation (the learning test above runs it on two processes): at 4 updates it would run after each.
    schedule = ("--total_episodes", 64, "--save_steps", 2, "--num_eval_questions", 0)
    launch("train_ppo.py", *args, *schedule, cwd=tmp_path / "whole")
    checkpoint = tmp_path / "whole" / paths.PPO_DIR / f"{train_ppo.CHECKPOINT_PREFIX}2"
    state = checkpoint / train_ppo.TRAINING_STATE_DIR
    assert json.loads((state / train_ppo.PROGRESS_FILE).read_text())["processes"] == 2
    assert sorted(path.name for path in state.glob("random_states_*")) == [f"random_states_{i}.pkl" for i in (0, 1)]

    resume = ("--resume_from_checkpoint", checkpoint)
    launch("train_ppo.py", *args, *schedule, *resume, cwd=tmp_path / "resumed")
    runs = [outputs(tmp_path / run, "ppo")["scalars"] for run in ("whole", "resumed")]
    for tag in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert [step for step, _ in runs[1][tag]] == [3, 4]
        assert values(runs[1], tag) == pytest.approx(values(runs[0], tag)[2:], abs=1e-5), tag
    for part in ("adapter_model.safetensors", "value/model.safetensors"):
        finals = [load_file(tmp_path / run / paths.PPO_DIR / part) for run in ("whole", "resumed")]
        for key in finals[0]:
            torch.testing.assert_close(finals[0][key], finals[1][key], rtol=0, atol=1e-5)

    # One process cannot take over two processes' random streams.
    monkeypatch.chdir(tmp_path)
    parsed = cli.parse_args(
        train_ppo.make_parser(),
        train_ppo.TINY_PRESET,
        [*map(str, (*args, "--per_device_train_batch_size", 8, *schedule, *resume))],
    )  # fmt: skip
    with pytest.raises(errors.PipelineError, match="--num_processes 2; this one has 4 of 16 with --num_processes 1"):
        train_ppo.main(*parsed)


@pytest.mark.parametrize("script", ["eval_sft", "eval_rm", "eval_ppo"])
def test_eval_scripts_refuse_to_run_on_several_processes(script, monkeypatch):
    module = importlib.import_module(script)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(errors.PipelineError, match=f"{script}.py runs in one process"):
        module.main(*module.make_parser().parse_args_and_config(["--tiny"]))
