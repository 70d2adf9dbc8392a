"""A diverged training never replaces a good checkpoint: a loss, gradient norm or weights that turn NaN or inf stop
the run with one paragraph before anything of that state is saved, in the Trainer stages (training.StopOnDivergence)
and in PPO's own loop (ppo_monitor.stop_if_diverged); the periodic checkpoints keep the last finite state."""

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerControl, TrainerState

import train_ppo
from conftest import run_main
from hfppo import checkpoints, cli, errors, paths, ppo_monitor, training

NAN, INF = float("nan"), float("inf")
# A learning rate that fp32 holds but no model survives: one AdamW step moves each weight by about this much, and the
# next forward pass overflows (the issue's `train_sft.py --tiny --learning_rate 1e30`, which saved NaN weights).
HUGE_LEARNING_RATE = 1e30
DIVERGED = r"training diverged at (step|update) \d+: "
KEPT = "The run stopped before saving anything of that state"


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def all_finite(weights_file: Path) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in load_file(weights_file).values())


# ----------------------------------------------------------------------------------------------------------------
# The checks themselves, on hand-made states


class TwoLayers(nn.Module):
    """A trained layer and a frozen one (as a LoRA adapter beside its base): only the trained one is checked."""

    def __init__(self):
        super().__init__()
        self.trained, self.frozen = nn.Linear(3, 3), nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def poisoned(layer: str | None) -> TwoLayers:
    model = TwoLayers()
    if layer is not None:
        with torch.no_grad():
            getattr(model, layer).weight[1, 2] = NAN
    return model


def trainer_args(**overrides) -> SimpleNamespace:
    """The TrainingArguments fields the callback reads."""
    return SimpleNamespace(
        **{"output_dir": "out/sft", "learning_rate": 1e-3, "fp16": False, "resume_from_checkpoint": None} | overrides
    )


def at_step(step: int) -> TrainerState:
    state = TrainerState()
    state.global_step = step
    return state


@pytest.mark.parametrize(
    "logs, fp16, problem",
    [
        ({"loss": NAN, "grad_norm": 1.0}, False, "the training loss is nan"),
        ({"loss": 0.0, "grad_norm": NAN}, False, "the gradient norm is nan"),  # the Trainer logs a NaN loss as 0
        ({"loss": 2.0, "grad_norm": INF}, False, "the gradient norm is inf"),
        ({"loss": 2.0, "grad_norm": INF}, True, None),  # fp16 loss scaling: the step is skipped, by design
        ({"loss": 2.0, "grad_norm": 0.5, "learning_rate": 1e-3}, False, None),
        ({"train_runtime": 3.0, "train_loss": 2.0}, False, None),
    ],
)
def test_a_non_finite_loss_or_gradient_norm_stops_the_run_at_its_log(logs, fp16, problem):
    callback, args = training.StopOnDivergence(), trainer_args(fp16=fp16)
    if problem is None:
        callback.on_log(args, at_step(7), TrainerControl(), logs=logs)
        return
    with pytest.raises(errors.PipelineError) as raised:
        callback.on_log(args, at_step(7), TrainerControl(), logs=logs)
    message = str(raised.value)
    assert message.startswith(f"training diverged at step 7: {problem}. {KEPT}: what out/sft held before it is as it")
    assert "Lower --learning_rate (this run's: 0.001)" in message and "last finite state" not in message


@pytest.mark.parametrize("event", ["on_step_end", "on_epoch_end"])
@pytest.mark.parametrize("flag", ["should_save", "should_evaluate", "should_training_stop", None])
@pytest.mark.parametrize("layer", ["trained", "frozen", None])
def test_the_trained_weights_are_checked_before_each_save_evaluation_and_the_end(event, flag, layer):
    """Read where a save may follow: a periodic save, an evaluation (which decides the save under save_strategy
    "best"), the last step (the final save); not at the other steps, and only the trained parameters."""
    control = TrainerControl()
    if flag is not None:
        setattr(control, flag, True)
    checked = flag in ("should_save", "should_evaluate") or (flag == "should_training_stop" and event == "on_step_end")
    call = getattr(training.StopOnDivergence(), event)
    if checked and layer == "trained":
        with pytest.raises(errors.PipelineError, match="^training diverged at step 4: the weights of trained.weight "):
            call(trainer_args(), at_step(4), control, model=poisoned(layer))
    else:
        call(trainer_args(), at_step(4), control, model=poisoned(layer))


@pytest.mark.parametrize("resumed", [None, "out/sft/checkpoint-2"])
def test_the_message_names_the_last_finite_state_the_run_saved_or_started_from(resumed):
    callback, args = training.StopOnDivergence(), trainer_args(resume_from_checkpoint=resumed)
    with pytest.raises(errors.PipelineError) as raised:
        callback.on_log(args, at_step(3), TrainerControl(), logs={"grad_norm": NAN})
    assert (f"last finite state on disk is {resumed}." in str(raised.value)) == (resumed is not None)
    callback.on_save(args, at_step(5), TrainerControl())
    with pytest.raises(errors.PipelineError, match="last finite state on disk is out/sft/checkpoint-5. Lower"):
        callback.on_log(args, at_step(6), TrainerControl(), logs={"grad_norm": NAN})


@pytest.mark.parametrize(
    "values, found",
    [
        ([1.0, 2.0, 3.0], False),
        ([3e38, 3e38, 3e38], False),  # finite, though their sum overflows: the check's fast path is only a filter
        ([1.0, INF, 3.0], True),
        ([INF, -INF, 3.0], True),  # a sum of NaN
        ([1.0, NAN, 3.0], True),
    ],
)
def test_non_finite_parameter_finds_exactly_the_parameters_holding_nan_or_inf(values, found):
    model = TwoLayers()
    with torch.no_grad():
        model.trained.bias.copy_(torch.tensor(values))
    assert training.non_finite_parameter(model) == ("trained.bias" if found else None)


FINITE_METRICS = {key: torch.tensor(0.5) for key in ppo_monitor.FINITE_METRICS}


@pytest.mark.parametrize(
    "key, layer, problem",
    [
        ("objective/scores", None, "the mean score is nan"),
        ("loss/policy_avg", None, "the policy loss is nan"),
        ("val/grad_norm", None, "the critic's gradient norm is nan"),
        (None, "trained", "the weights of trained.weight hold NaN or inf values"),
        (None, "frozen", None),
        (None, None, None),
    ],
)
def test_ppo_stops_at_an_update_whose_figures_or_weights_are_not_finite(key, layer, problem):
    metrics = FINITE_METRICS | ({key: torch.tensor(NAN)} if key else {})
    config = train_ppo.PPOConfig(output_dir="out/ppo", learning_rate=2e-5, critic_learning_rate=1e-4)
    if problem is None:
        ppo_monitor.stop_if_diverged(3, metrics, poisoned(layer), config, None, None)
        return
    with pytest.raises(errors.PipelineError) as raised:
        ppo_monitor.stop_if_diverged(3, metrics, poisoned(layer), config, Path("out/ppo/checkpoint-2"), None)
    assert str(raised.value) == (
        f"training diverged at update 3: {problem}. {KEPT}: what out/ppo held before it is as it was; the run's last "
        "finite state on disk is out/ppo/checkpoint-2. Lower --learning_rate (this run's: 2e-05, the critic's 0.0001) "
        "or --critic_learning_rate and run again; a run that diverges at any learning rate points at its reward or at "
        "a setting that scales the loss or its gradients."
    )


def test_a_policy_that_cannot_be_sampled_is_named_with_what_left_it_so():
    config = train_ppo.PPOConfig(output_dir="out/ppo")
    start = str(ppo_monitor.unsampleable(0, 0, "out/sft", config, None))
    assert start.startswith("no answer can be sampled from the policy this run starts from (out/sft)")
    # The checkpoint of the update that left the overflowing weights is not offered as a finite state; an older one is.
    for saved, named in (("checkpoint-4", False), ("checkpoint-2", True)):
        message = str(ppo_monitor.unsampleable(4, 0, "out/sft", config, Path("out/ppo") / saved))
        assert message.startswith("training diverged at update 5: the policy's next-token probabilities hold NaN")
        assert "the weights update 4 left are finite but overflow" in message
        assert ("last finite state on disk is out/ppo/checkpoint-2" in message) == named


# ----------------------------------------------------------------------------------------------------------------
# Real runs of the tiny preset that diverge


def test_sft_diverging_over_a_good_checkpoint_keeps_it_and_its_last_finite_periodic_checkpoint(tiny_base, tmp_path):
    """The issue's case: `train_sft.py --tiny --learning_rate 1e30` over a good checkpoint/sft."""
    output = tmp_path / paths.SFT_DIR
    shutil.copytree(tiny_base, output)  # a good language model where the run saves its own
    before = files_of(output)
    result = run_main(
        "train_sft.py", "--tiny", "--model_name_or_path", tiny_base, "--learning_rate", HUGE_LEARNING_RATE,
        "--max_steps", 6, "--save_strategy", "steps", "--save_steps", 2, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Chat with it" not in result.stdout and "mean training loss" not in result.stdout
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.startswith("error: training diverged at step ") and f"{KEPT}: what checkpoint/sft held" in error
    # The warm-up's first step has learning rate 0, its second moves the weights to about 1e29 (finite), and the
    # third step's gradient is NaN: checkpoint-2 is the last finite state, and nothing later was saved.
    assert "last finite state on disk is checkpoint/sft/checkpoint-2." in error
    periodic = sorted(path.name for path in output.iterdir() if checkpoints.PERIODIC_CHECKPOINT.fullmatch(path.name))
    assert periodic == ["checkpoint-2"] and all_finite(output / "checkpoint-2" / "model.safetensors")
    # Every file of the good model as it was; new beside them only the periodic checkpoint, and the model card TRL
    # writes into the output folder at each periodic save (its _save_checkpoint: the run's card, not the model's).
    after = files_of(output)
    assert {name: after.get(name) for name in before} == before
    assert {name.split("/")[0] for name in after.keys() - before.keys()} == {"checkpoint-2", "README.md"}
    assert not any(path.name.endswith((checkpoints.PARTIAL, checkpoints.READY)) for path in output.parent.iterdir())


@pytest.fixture
def untrained_rm(tiny_base, tmp_path) -> Path:
    """A reward-model checkpoint: the tiny base with a new score head (GRPO needs one; its scores do not matter)."""
    path = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(path)
    return path


@pytest.mark.parametrize("script", ["train_rm.py", "train_dpo.py", "train_grpo.py"])
def test_every_trainer_stage_stops_at_divergence_and_saves_nothing(script, tiny_base, untrained_rm, tmp_path):
    models = {
        "train_rm.py": ("--model_name_or_path", tiny_base),
        "train_dpo.py": ("--sft_model_path", tiny_base),
        "train_grpo.py": ("--sft_model_path", tiny_base, "--reward_model_path", untrained_rm),
    }[script]
    result = run_main(
        script, "--tiny", *models, "--learning_rate", HUGE_LEARNING_RATE, "--warmup_steps", 0, "--max_steps", 4,
        "--output_dir", "out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "saved to" not in result.stdout
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.startswith("error: training diverged at step ") and f"{KEPT}: what out held before it" in error
    written = {path.name for path in (tmp_path / "out").rglob("*")}  # none if the folder is absent
    assert not written & {"model.safetensors", "adapter_model.safetensors", *checkpoints.CHECKPOINT_MARKERS}, written


def nan_reward(queries, answers) -> torch.Tensor:
    return torch.full((len(answers),), NAN)


def zero_reward(queries, answers) -> torch.Tensor:
    return torch.zeros(len(answers))


def run_ppo(workdir: Path, tiny_base: Path, *args, reward_fn=zero_reward) -> None:
    """train_ppo.main in `workdir`, on the tiny base as its SFT model and critic, 3 updates, no evaluation."""
    models = ("--sft_model_path", tiny_base, "--value_model_path", tiny_base)
    flags = ("--tiny", *models, "--num_eval_questions", 0, "--total_episodes", 48, "--output_dir", "out", *args)
    old_cwd = Path.cwd()
    os.chdir(workdir)  # the module's fixture cannot use monkeypatch.chdir (function-scoped)
    try:
        train_ppo.main(*cli.parse_args(train_ppo.make_parser(), train_ppo.TINY_PRESET, list(map(str, flags))),
                       reward_fn=reward_fn)  # fmt: skip
    finally:
        os.chdir(old_cwd)


@pytest.fixture(scope="module")
def good_ppo(tiny_base, tmp_path_factory) -> Path:
    """The output folder of a PPO run that did not diverge."""
    workdir = tmp_path_factory.mktemp("good_ppo")
    run_ppo(workdir, tiny_base)
    return workdir / "out"


# One optimizer step per update (one minibatch of one micro batch's worth): the weights that update leaves are finite,
# about 1e30, and it is the next update's sampling that fails.
ONE_STEP = ("--num_ppo_epochs", 1, "--num_mini_batches", 1, "--gradient_accumulation_steps", 2)


@pytest.mark.parametrize(
    "flags, reward_fn, problem",
    [
        (
            ("--learning_rate", HUGE_LEARNING_RATE),
            zero_reward,
            "training diverged at update 1: the policy loss is nan",
        ),
        ((), nan_reward, "training diverged at update 1: the mean score is nan"),
        (
            ("--learning_rate", HUGE_LEARNING_RATE, *ONE_STEP),
            zero_reward,
            "training diverged at update 2: the policy's",
        ),
    ],
)
def test_ppo_diverging_over_a_good_checkpoint_keeps_it(flags, reward_fn, problem, good_ppo, tiny_base, tmp_path):
    shutil.copytree(good_ppo, tmp_path / "out")
    before = files_of(tmp_path / "out")
    with pytest.raises(errors.PipelineError) as raised:
        run_ppo(tmp_path, tiny_base, "--save_steps", 1, *flags, reward_fn=reward_fn)
    message = str(raised.value)
    assert message.startswith(problem) and f"{KEPT}: what out held before it is as it was" in message
    after = files_of(tmp_path / "out")
    # The overflowing run saved checkpoint-1 (finite weights, those its sampling then failed on) and names none.
    periodic = {name.split("/")[0] for name in after.keys() - before.keys()}
    assert periodic == ({"checkpoint-1"} if "update 2" in problem else set())
    assert "last finite state" not in message
    assert {name: data for name, data in after.items() if name.split("/")[0] not in periodic} == before
    for checkpoint in periodic:
        assert all(all_finite(path) for path in (tmp_path / "out" / checkpoint).rglob("*.safetensors"))
