"""train_ppo.py's --report_to: every tracker gets the same tags at the same steps, no tracker writes no TensorBoard
folder, and a tracker that is not installed stops the run before anything loads (the Trainer stages' too). Trackers
other than TensorBoard are fakes registered under accelerate's names (W&B, MLflow), so that the run's own path to them
is the one tested."""

import json

import accelerate.tracking
import pytest
import torch
from accelerate.utils import LoggerType
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers.integrations import integration_utils

import train_ppo
from conftest import ppo_args, run_main
from hfppo import charts, errors, paths, ppo_saves, trackers, training

TEXT_TAGS = ("eval/samples", "eval/reward_hacking")


class FakeTracker(accelerate.tracking.GeneralTracker):
    """What accelerate hands a tracker: its start, the run's configuration, every log() and log_table(), its finish."""

    requires_logging_directory = False

    def __init__(self, project: str, **init_kwargs):
        super().__init__()
        self.project, self.init_kwargs = project, init_kwargs
        self.config, self.logged, self.tables, self.finished = None, [], [], 0
        type(self).started.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished += 1


class FakeWandB(FakeTracker):
    name, started = "wandb", []

    def log_table(self, table_name, columns=None, data=None, dataframe=None, step=None, **kwargs):
        self.tables.append((step, table_name, columns, data))


class FakeMLflow(FakeTracker):
    name, started = "mlflow", []


def scalar_points(tracker: FakeTracker) -> dict[str, list[int]]:
    """tag -> the steps a tracker got a number at."""
    points = {}
    for step, values in tracker.logged:
        for tag, value in values.items():
            if not isinstance(value, str):
                points.setdefault(tag, []).append(step)
    return points


def test_every_tracker_gets_the_same_tags_at_the_same_steps(tmp_path, sft_run, tiny_base, monkeypatch):
    """TensorBoard, W&B and MLflow together: the same scalars at the same steps (train/objective/eval/time/memory);
    the text entries in TensorBoard's Text tab and in W&B's tables, none to MLflow, whose log() takes numbers only."""
    for fake in (FakeWandB, FakeMLflow):
        fake.started.clear()
        monkeypatch.setitem(accelerate.tracking.LOGGER_TYPE_TO_CLASS, fake.name, fake)
    monkeypatch.setattr(trackers, "installed", lambda: list(trackers.PACKAGES))
    monkeypatch.setattr(
        accelerate.tracking, "_available_trackers", [LoggerType.TENSORBOARD, LoggerType.WANDB, LoggerType.MLFLOW]
    )
    # a reward-hacking line at every evaluation, so that its text entry is logged too
    monkeypatch.setattr(train_ppo.hacking, "signs", lambda start, now, length_drop: ["a sign for the test"])
    monkeypatch.chdir(tmp_path)
    flags = ("--sft_model_path", sft_run / paths.SFT_DIR, "--value_model_path", tiny_base, "--total_episodes", 32)
    flags += ("--num_eval_questions", 4, "--eval_steps", 1, "--report_to", "tensorboard", "wandb", "mlflow")
    train_ppo.main(*ppo_args(*flags), reward_fn=lambda queries, answers: torch.ones(len(answers)))

    (wandb,), (mlflow,) = FakeWandB.started, FakeMLflow.started
    (run_dir,) = (tmp_path / paths.TENSORBOARD_ROOT / "ppo").iterdir()
    tensorboard = {tag: [step for step, _ in points] for tag, points in charts.read_scalars(run_dir).items()}
    assert scalar_points(wandb) == scalar_points(mlflow) == tensorboard
    assert tensorboard["objective/scores"] == tensorboard["memory/peak_gib"] == tensorboard["lr"] == [1, 2]
    assert tensorboard["eval/score"] == tensorboard["eval/hacking_signs"] == [0, 1, 2]
    families = {"objective", "policy", "loss", "val", "eval", "time", "memory"}
    assert {tag.split("/")[0] for tag in tensorboard} >= families

    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    for tag in TEXT_TAGS:
        assert [event.step for event in events.Tensors(f"{tag}/text_summary")] == [0, 1, 2], tag
        texts = [(step, data[0][0]) for step, name, columns, data in wandb.tables if name == tag]
        assert [step for step, _ in texts] == [0, 1, 2] and all(text for _, text in texts), tag
    assert "a sign for the test" in texts[-1][1]
    assert not mlflow.tables and not any(isinstance(v, str) for _, values in mlflow.logged for v in values.values())

    # one project, the run named after its TensorBoard folder, the run's settings as the configuration; finished once
    run_name = f"ppo {run_dir.name}"
    assert (wandb.project, wandb.init_kwargs) == (trackers.PROJECT, {"name": run_name})
    assert (mlflow.project, mlflow.init_kwargs) == (trackers.PROJECT, {"run_name": run_name})
    assert wandb.config["learning_rate"] == 3e-3 and wandb.config["report_to"] == "['tensorboard', 'wandb', 'mlflow']"
    assert wandb.finished == mlflow.finished == 1


def test_report_to_none_writes_no_tensorboard_folder_and_saves(tmp_path, sft_run, tiny_base, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ("--sft_model_path", sft_run / paths.SFT_DIR, "--value_model_path", tiny_base, "--total_episodes", 32)
    flags += ("--num_eval_questions", 4, "--save_steps", 1, "--report_to", "none")
    train_ppo.main(*ppo_args(*flags), reward_fn=lambda queries, answers: torch.ones(len(answers)))
    assert not (tmp_path / paths.TENSORBOARD_ROOT).exists()
    assert (tmp_path / paths.PPO_DIR / "adapter_model.safetensors").is_file()
    assert (tmp_path / paths.PPO_DIR / ppo_saves.VALUE_DIR / "model.safetensors").is_file()
    progress = tmp_path / paths.PPO_DIR / "checkpoint-1" / ppo_saves.TRAINING_STATE_DIR / ppo_saves.PROGRESS_FILE
    assert "tensorboard_run" not in json.loads(progress.read_text())  # no TensorBoard run for a resume to continue
    printed = capsys.readouterr().out
    assert "no tracker (--report_to none)" in printed and "eval at update 2: score" in printed
    assert "no chart, which is drawn from TensorBoard's files: --report_to none has no tensorboard" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ("tensorboard", "wandb"),
            "--report_to asks for wandb, and its package is not installed, so the run could not log to it. Install "
            "it (pip install wandb)",
        ),
        (("comet_ml", "mlflow"), "Install them (pip install comet-ml mlflow)"),
        (("neptune",), "--report_to neptune: not a tracker train_ppo.py can log to (neptune: the Trainer stages"),
        (("none", "tensorboard"), "--report_to none tensorboard: none (no tracker) and all"),
    ],
)
def test_a_tracker_that_is_not_installed_stops_the_run_with_exit_2(tmp_path, monkeypatch, flags, message):
    """Before any model loads or anything is written, in one paragraph that names the flag, the tracker and its pip
    package; only TensorBoard installed here, whatever this machine has."""
    monkeypatch.setattr(trackers, "installed", lambda: ["tensorboard"])
    result = run_main("train_ppo.py", "--tiny", "--report_to", *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --report_to ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not any(tmp_path.iterdir())


TRAINER_REFUSALS = {  # --report_to's flags or --config YAML -> the message
    "wandb not installed": (
        ["--report_to", "wandb"],
        "--report_to asks for wandb, and its package is not installed, so the run could not log to it. Install it "
        "(pip install wandb)",
    ),
    "two not installed": ("report_to: [tensorboard, mlflow, dagshub]\n", "Install them (pip install mlflow dagshub)"),
    "an unknown name": (["--report_to", "wandbb"], "--report_to 'wandbb': not a tracker transformers reports to"),
    "none with a name": ("report_to: [none, tensorboard]\n", "--report_to none tensorboard: none (no tracker) and"),
}


@pytest.mark.parametrize("case", TRAINER_REFUSALS)
@pytest.mark.parametrize("script", ["train_sft.py", "train_rm.py", "train_dpo.py", "train_grpo.py"])
def test_a_trainer_stage_refuses_a_tracker_it_cannot_report_to_before_anything_loads(
    tmp_path, monkeypatch, script, case
):
    """As train_ppo.py does, in one paragraph with exit status 2; only TensorBoard installed here, whatever this
    machine has. The Trainer itself would check after the model had loaded, and end in a traceback."""
    for name in ("wandb", "mlflow", "dagshub"):
        monkeypatch.setattr(integration_utils, f"is_{name}_available", lambda: False)
    flags, message = TRAINER_REFUSALS[case]
    if isinstance(flags, str):
        (tmp_path / "run.yaml").write_text(flags)
        flags = ["--config", tmp_path / "run.yaml"]
    result = run_main(script, "--tiny", *flags, cwd=tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --report_to ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not any((tmp_path / "run").iterdir())


def test_a_trainer_stage_takes_every_tracker_transformers_has_when_installed(monkeypatch):
    """Every name transformers reports to passes where its package is installed (kubeflow: inside a TrainJob)."""
    names = list(integration_utils.INTEGRATION_TO_CALLBACK)
    for name in dir(integration_utils):
        if name.startswith("is_") and name.endswith("_available"):
            monkeypatch.setattr(integration_utils, name, lambda: True)
    training.check_report_to(names)
    monkeypatch.setattr(integration_utils, "is_kubeflow_available", lambda: False)
    with pytest.raises(errors.ArgumentError, match="KUBEFLOW_TRAINER_SERVER_URL"):
        training.check_report_to(["kubeflow"])
