"""Several processes: every accelerate config loads, and each training script under `accelerate launch` with
configs/accelerate/ddp.yaml on two CPU processes (gloo) trains as one process with the same global batch does. So do
SFT and the reward model under fsdp.yaml, zero2.yaml and zero3.yaml (real FSDP2 and DeepSpeed ZeRO on CPU processes,
through tests/cpu_as_gpus.py); PPO trains under zero2.yaml as under ddp.yaml, and refuses fsdp.yaml and zero3.yaml."""

import importlib
import importlib.util
import json
import os
import re
import select
import subprocess
import sys
import threading
from pathlib import Path

import cpu_as_gpus
import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import train_ppo
from conftest import built_once, free_port, run_ok, run_script
from hfppo import charts, checkpoints, cli, errors, paths, ppo_saves, ppo_setup, runtime

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


def accelerate_launch(config: str, processes: int, *wrapper: Path) -> tuple:
    """The command line of `accelerate launch --config_file configs/accelerate/<config>.yaml` on `processes`
    processes in fp32 (the configs' bf16 is for GPUs), meeting on a free port; `wrapper`: a script started in place of
    the pipeline script, which it then runs."""
    return (
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIGS / f"{config}.yaml",
        "--num_processes", processes, "--mixed_precision", "no", "--main_process_port", free_port(), *wrapper,
    )  # fmt: skip


def launch(script: str, *args, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/ddp.yaml` of a pipeline script on CPU processes (gloo).

    Not `accelerate launch --cpu`: in accelerate 1.15 that starts one process (its CPU launcher spreads processes only
    through mpirun). The multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU, the variable --cpu sets, starts them.
    """
    launcher = accelerate_launch("ddp", processes)
    return run_ok(script, *args, cwd=cwd, launcher=launcher, env=os.environ | {"ACCELERATE_USE_CPU": "true"})


# The configs that shard, what tests/cpu_as_gpus.py reports each one ran as, and the module each needs.
SHARDED_CONFIGS = {"fsdp": "FSDP2", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
DEEPSPEED_MISSING = (
    "DeepSpeed is not installed: `pip install --no-build-isolation -r requirements-deepspeed.txt` runs the zero2.yaml "
    "and zero3.yaml tests (on CPU processes too: DeepSpeed's CPU accelerator talks over gloo)"
)
# Decided at collection, so that a skipped test builds none of its fixtures (PPO's need the SFT and reward models).
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason=DEEPSPEED_MISSING)
CPU_AS_GPUS = paths.ROOT / "tests" / "cpu_as_gpus.py"


def sharded_config_params(configs) -> list:
    return [pytest.param(config, marks=[needs_deepspeed] if config.startswith("zero") else []) for config in configs]


def launch_sharded(config: str, script: str, *args, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/<config>.yaml` of a pipeline script on two CPU processes
    (gloo) that really shard: through tests/cpu_as_gpus.py, since accelerate 1.15 turns FSDP and DeepSpeed on CPU
    processes into plain DDP (with ACCELERATE_USE_CPU) or into processes that never meet (without it). fp32 (the
    configs' bf16 is for GPUs); DeepSpeed on its CPU accelerator."""
    launcher = accelerate_launch(config, 2, CPU_AS_GPUS)
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"} | {"DS_ACCELERATOR": "cpu"}
    return (run_ok if ok else run_script)(script, *args, cwd=cwd, launcher=launcher, env=env)


def sharding_reports(result: subprocess.CompletedProcess) -> dict[int, str]:
    """What each process of a launch_sharded run reported it sharded (tests/cpu_as_gpus.py's REPORT): process -> the
    rest of its line (one model per process: the Trainer's, or PPO's policy and critic in one)."""
    lines = re.findall(r"cpu_as_gpus: process (\d) of 2 under (.*)", result.stderr)
    assert len(lines) == 2, result.stderr[-3000:]
    return {int(process): rest for process, rest in lines}


def test_a_process_reports_its_sharding_in_one_write_no_other_process_can_split(monkeypatch):
    """The processes share one stderr: a line written in parts can have another process's progress bar or report
    land inside it, and sharding_reports then finds one report where there are two (seen on a busy machine)."""
    writes = []
    monkeypatch.setattr(cpu_as_gpus.os, "write", lambda fd, data: writes.append((fd, data)) or len(data))
    cpu_as_gpus.report("FSDP2", "Qwen2ForCausalLM: 3 of 3 parameters are DTensors")
    line = b"cpu_as_gpus: process 0 of 1 under FSDP2: Qwen2ForCausalLM: 3 of 3 parameters are DTensors\n"
    assert writes == [(sys.stderr.fileno(), line)] and len(line) <= select.PIPE_BUF


def assert_sharded(result: subprocess.CompletedProcess, config: str) -> None:
    """Both processes ran under the config's kind of sharding, and each held about half of what it shards."""
    reports = sharding_reports(result)
    assert sorted(reports) == [0, 1]
    for rest in reports.values():
        assert rest.startswith(SHARDED_CONFIGS[config] + ":"), rest
        if config == "fsdp":  # every parameter a DTensor
            sharded, parameters = map(int, re.search(r"(\d+) of (\d+) parameters are DTensors", rest).groups())
            assert sharded == parameters > 0, rest
        local, total = map(int, re.search(r"holding (\d+) of (?:their|the) (\d+)", rest).groups())
        assert 0.4 * total < local < 0.6 * total, rest  # each process its share: half, up to rounding to shards


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


STAGES = [("train_sft.py", "sft", ["train/loss"]), ("train_rm.py", "rm", ["train/loss", "train/margin"])]


def stage_args(tiny_base: Path, stage: str) -> tuple:
    return (
        "--tiny", "--model_name_or_path", tiny_base, "--dataloader_drop_last", "true",
        "--num_train_epochs", RUN_EPOCHS[stage],
    )  # fmt: skip


@pytest.fixture(scope="module")
def one_process(tiny_base, tmp_path_factory):
    """stage -> the working folder of its one-process run, 8 rows per step: trained once, on first use, for every
    run on several processes to be held against."""

    def run(script: str, stage: str) -> Path:
        def train(workdir: Path) -> None:
            run_ok(script, *stage_args(tiny_base, stage), "--per_device_train_batch_size", 8, cwd=workdir)

        return built_once(tmp_path_factory, f"one_process_{stage}", train)

    return run


def assert_trains_as_one(one_dir: Path, two_dir: Path, stage: str, stepwise: list[str]) -> None:
    """The run in two_dir (two processes of 4 rows) trained as the one-process run in one_dir (8 rows) did."""
    one, two = outputs(one_dir, stage), outputs(two_dir, stage)
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
        held_out = [(run / paths.RM_DIR / paths.HELD_OUT_FILE).read_text() for run in (one_dir, two_dir)]
        assert held_out[0] == held_out[1]


@pytest.mark.parametrize(("script", "stage", "stepwise"), STAGES)
def test_two_processes_train_as_one_with_the_same_global_batch(
    script, stage, stepwise, one_process, tiny_base, tmp_path
):
    """8 rows per step: 8 on one process, 4 on each of two. The last, partial batch of an epoch is dropped in both
    runs: two processes would fill it up with repeated rows (accelerate's even_batches) where one process does not."""
    launch(script, *stage_args(tiny_base, stage), "--per_device_train_batch_size", 4, cwd=tmp_path)
    assert_trains_as_one(one_process(script, stage), tmp_path, stage, stepwise)


# A checkpoint saved under sharding holds the trained weights, gathered whole: each tensor the one-process run's shape
# and dtype, and the whole state far nearer that run's trained weights than the starting weights: within this
# fraction of the distance training moved them (measured: at most 4e-6 for SFT, 7e-3 for the reward model, whose 76
# steps carry rounding further; a checkpoint of the starting weights is at 1, one of zeros or of a shard fails the
# shapes).
SAVED_DISTANCE = 0.25
# FSDP2's full state dict names a tied weight under both its names: the tiny base ties lm_head to embed_tokens, so
# fsdp.yaml's SFT checkpoint holds lm_head.weight too (a copy, which from_pretrained ties again), one process's not.
TIED_COPIES = {"lm_head.weight": "model.embed_tokens.weight"}


def assert_saved_whole(one_dir: Path, two_dir: Path, stage: str, tiny_base: Path) -> None:
    folder = {"sft": paths.SFT_DIR, "rm": paths.RM_DIR}[stage]
    one, two = (load_file(run / folder / "model.safetensors") for run in (one_dir, two_dir))
    base = load_file(tiny_base / "model.safetensors")
    for name, tied in TIED_COPIES.items():
        if name in two and name not in one:
            assert torch.equal(two.pop(name), two[tied]), name
    assert sorted(two) == sorted(one)
    for name in one:
        assert (two[name].shape, two[name].dtype) == (one[name].shape, one[name].dtype), name
    shared = [name for name in one if name in base]  # the reward model's score head is new
    distance = [torch.cat([(run[name] - one[name]).flatten() for name in shared]).norm() for run in (two, base)]
    assert distance[0] < SAVED_DISTANCE * distance[1]


@pytest.mark.parametrize(("script", "stage", "stepwise"), STAGES)
@pytest.mark.parametrize("config", sharded_config_params(sorted(SHARDED_CONFIGS)))
def test_sharded_configs_train_as_one_process_on_cpu_processes(
    config, script, stage, stepwise, one_process, tiny_base, tmp_path
):
    """fsdp.yaml, zero2.yaml and zero3.yaml on two CPU processes (gloo), really sharding: the same checks as DDP's
    against one process with the same global batch (measured: the loss within 2e-6 of one process's at every SFT
    step, 6e-3 over the reward model's 76), and a checkpoint saved whole."""
    result = launch_sharded(
        config, script, *stage_args(tiny_base, stage), "--per_device_train_batch_size", 4, cwd=tmp_path
    )
    assert_sharded(result, config)
    one_dir = one_process(script, stage)
    assert_trains_as_one(one_dir, tmp_path, stage, stepwise)
    assert_saved_whole(one_dir, tmp_path, stage, tiny_base)


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
# rounding; summed over an answer's tokens, 1e-3 is what test_ppo_run.py allows one process.
PPO_START_KL = 1e-3


def fake_accelerator(num_processes: int, process_index: int):
    return type("Process", (), {"num_processes": num_processes, "process_index": process_index})


def test_the_processes_answer_each_prompt_of_an_update_once():
    order = ppo_setup.PromptOrder(50, seed=0)
    for update in range(5):
        shares = [ppo_setup.process_share(order, update, 12, fake_accelerator(3, i)) for i in range(3)]
        alone = ppo_setup.process_share(order, update, 12, fake_accelerator(1, 0))
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
    assert not list((tmp_path / paths.PPO_DIR).glob(f"{ppo_saves.CHECKPOINT_PREFIX}*"))
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
    checkpoint = tmp_path / "whole" / paths.PPO_DIR / f"{ppo_saves.CHECKPOINT_PREFIX}2"
    state = checkpoint / ppo_saves.TRAINING_STATE_DIR
    assert json.loads((state / ppo_saves.PROGRESS_FILE).read_text())["processes"] == 2
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
    with pytest.raises(errors.PipelineError, match=r"on 2 process\(es\); this one has 4 of 16 on 1\. "):
        train_ppo.main(*parsed)


@pytest.mark.parametrize("config", sharded_config_params(["fsdp", "zero3"]))
def test_ppo_refuses_the_configs_that_shard_the_weights(config, sft_run, rm_run, tiny_base, tmp_path):
    """Under real FSDP2 and ZeRO-3 (on CPU processes: under ACCELERATE_USE_CPU both would be plain DDP, and PPO would
    train), before it writes anything."""
    args = ("--tiny", *ppo_models(sft_run, rm_run, tiny_base), "--per_device_train_batch_size", 4)
    result = launch_sharded(config, "train_ppo.py", *args, cwd=tmp_path, ok=False)
    assert result.returncode != 0
    refusal = "error: train_ppo.py runs under DDP or DeepSpeed ZeRO-1/2 (configs/accelerate/ddp.yaml or zero2.yaml)"
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]  # each process, in the script's own words
    assert not list(tmp_path.iterdir())


# PPO under zero2.yaml against ddp.yaml, both on two processes, with gradient clipping off (--max_grad_norm far above
# any norm). With it on the two differ by design: DDP clips the policy's and the critic's gradient norms each on its
# own, DeepSpeed their joint norm (ppo_setup.make_accelerator), and in the tiny preset the critic's norm (1 to 2.5)
# is over max_grad_norm 1.0 and the policy's (0.05 to 0.16) far under, so the joint clip also shrinks the policy's
# step (measured over a whole run: a mean score of 1.07 against 1.39). Off, both runs do the same float32
# operations: an all-reduce over two processes adds a + b in either order, and averaging halves exactly, so they
# agree to the bit (measured); 1e-5 as for the resumed run above.
PPO_NO_CLIPPING = ("--max_grad_norm", 1e6)


@needs_deepspeed
def test_ppo_under_zero2_trains_as_under_ddp(sft_run, rm_run, tiny_base, tmp_path):
    """Four updates of 16 answers, 8 on each process, with ZeRO-2 partitioning the optimizer state of the policy's
    LoRA and the critic; the same updates and the same final weights as DDP."""
    args = ("--tiny", *ppo_models(sft_run, rm_run, tiny_base), "--per_device_train_batch_size", 4)
    args += ("--total_episodes", 64, "--num_eval_questions", 0, *PPO_NO_CLIPPING)
    launch("train_ppo.py", *args, cwd=tmp_path / "ddp")
    assert_sharded(launch_sharded("zero2", "train_ppo.py", *args, cwd=tmp_path / "zero2"), "zero2")
    runs = [outputs(tmp_path / run, "ppo") for run in ("ddp", "zero2")]
    assert runs[1]["checkpoints"] == ["ppo"] and runs[1]["tensorboard_runs"] == 1 and runs[1]["charts"] == ["ppo.png"]
    for tag in ("episode", "lr", "objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert len(values(runs[1]["scalars"], tag)) == 4, tag
        assert values(runs[1]["scalars"], tag) == pytest.approx(values(runs[0]["scalars"], tag), abs=1e-5), tag
    for part in ("adapter_model.safetensors", "value/model.safetensors"):
        finals = [load_file(tmp_path / run / paths.PPO_DIR / part) for run in ("ddp", "zero2")]
        assert sorted(finals[1]) == sorted(finals[0]), part
        for key in finals[0]:
            torch.testing.assert_close(finals[1][key], finals[0][key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("script", ["eval_sft", "eval_rm", "eval_ppo", "compare"])
def test_eval_scripts_refuse_to_run_on_several_processes(script, monkeypatch):
    module = importlib.import_module(script)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(errors.PipelineError, match=f"{script}.py runs in one process"):
        module.main(*module.make_parser().parse_args_and_config(["--tiny"]))


@pytest.mark.parametrize(
    ("sharding", "distributed_type", "num_processes", "refused"),
    [
        (None, DistributedType.MULTI_CPU, 2, False),  # ddp.yaml with --cpu: what the DDP tests run
        ("ACCELERATE_USE_FSDP", DistributedType.MULTI_GPU, 2, False),  # as on GPUs, or tests/cpu_as_gpus.py
        ("ACCELERATE_USE_FSDP", DistributedType.MULTI_CPU, 2, True),  # fsdp.yaml with --cpu: plain DDP
        ("ACCELERATE_USE_FSDP", DistributedType.NO, 1, True),  # fsdp.yaml without --cpu or a GPU: apart
        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, 1, True),  # a ZeRO config without a GPU
    ],
)
def test_a_launch_accelerate_did_not_honour_stops(sharding, distributed_type, num_processes, refused, monkeypatch):
    """accelerate 1.15 runs a sharded config on GPU-less processes as plain DDP, or as processes that never meet and
    write the same outputs: each training script stops instead of training something else than asked."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    if sharding:
        monkeypatch.setenv(sharding, "true")
    state = type("State", (), {"distributed_type": distributed_type, "num_processes": num_processes})
    if refused:
        with pytest.raises(errors.PipelineError, match="FSDP and DeepSpeed need GPUs in accelerate 1.15"):
            runtime.check_distributed(state)
    else:
        runtime.check_distributed(state)
