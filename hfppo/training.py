"""The Trainer stages' callbacks (a compact progress bar, the run's settings saved, a stop on divergence), the
training run with them, and their --report_to check."""

import math
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import ProgressCallback, TrainerCallback
from transformers.integrations import integration_utils as integrations
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hfppo import adapters, checkpoints, errors, resuming, trackers


class SaveRunSettings(TrainerCallback):
    """Writes beside an adapter the record of its base (adapters.record_base) and the run's settings into each
    checkpoint-<step> the Trainer saves, for `check_resume`: its last file, after which the save is complete (its
    MarkPeriodicSaves marker goes)."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            adapters.record_base(folder)  # an adapter's base (DPO, GRPO), as in the final save
            resuming.write_run_settings(folder, self.settings)
            (folder / checkpoints.SAVING_MARKER).unlink(missing_ok=True)


class MarkPeriodicSaves(TrainerCallback):
    """Marks each checkpoint-<step> before the Trainer writes it in place (checkpoints.mark_saving), until
    SaveRunSettings completes it: a kill in between leaves a marked, incomplete folder, which the next run's output
    check deletes (checkpoints.settle_saves), so that the command resuming from the last complete one works. Added
    after StopOnDivergence, so that a run stopped before a save marks nothing."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:
            checkpoints.mark_saving(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    on_epoch_end = on_step_end


# What a Trainer stage's logs must keep finite. The gradient norm turns NaN at the first step whose loss does, which
# the Trainer itself logs as 0 (its default --logging_nan_inf_filter); the loss, with that filter off.
FINITE_LOGS = {"loss": "the training loss", "grad_norm": "the gradient norm"}


def _own_values(parameter: torch.Tensor) -> torch.Tensor:
    """This process's values of a parameter: all of them, or its shard under DeepSpeed ZeRO-3 (where the parameter is
    an empty placeholder) or FSDP2 (a DTensor)."""
    if hasattr(parameter, "ds_tensor"):
        return parameter.ds_tensor
    if hasattr(parameter, "to_local"):
        return parameter.to_local()
    return parameter


@torch.no_grad()
def non_finite_parameter(model) -> str | None:
    """The name of a trained parameter (requires_grad: the adapter alone under LoRA) that holds NaN or inf on any
    process; None if none does. Every process checks its own values, then all share what they found, so that all
    stop together instead of some waiting for the others at the next collective."""
    trained = [
        (name, _own_values(parameter)) for name, parameter in model.named_parameters() if parameter.requires_grad
    ]
    # A sum is NaN or inf where a value is, and much faster than testing each value (one pass, one reduction); the
    # test, run only then, tells a sum that overflowed from finite values apart.
    sums = torch.stack([values.sum().float() for _, values in trained]) if trained else torch.zeros(0)
    own = next(
        (
            trained[i][0]
            for i in torch.nonzero(~sums.isfinite()).flatten().tolist()
            if not trained[i][1].isfinite().all()
        ),
        None,
    )
    return next(filter(None, gather_object([own])), None)


def divergence_error(where: str, problem: str, output_dir: str | Path, last_state: str | Path | None, remedy: str):
    """The one paragraph a diverged run stops with: where and what turned non-finite, that nothing of that state was
    saved, the last finite state the run saved (if any), and what to do."""
    kept = f"; the run's last finite state on disk is {last_state}" if last_state else ""
    return errors.PipelineError(
        f"training diverged at {where}: {problem}. The run stopped before saving anything of that state: what "
        f"{output_dir} held before it is as it was{kept}. {remedy}"
    )


class StopOnDivergence(TrainerCallback):
    """Stops a Trainer run that diverges, before anything of the diverged state is saved: at a logged loss or
    gradient norm that is NaN or inf, or at trained weights that are, read before each periodic save, each
    evaluation (which decides the save under save_strategy "best") and the run's last step (before its summary line
    and the final save). Only there: the logs are checked at every step, and the weights cost a pass over them."""

    def __init__(self):
        self.last_saved = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, name in FINITE_LOGS.items():
            # Under fp16 loss scaling an overflowing step's gradient norm is inf by design, and the step is skipped.
            if key in logs and not math.isfinite(logs[key]) and not (key == "grad_norm" and args.fp16):
                self.stop(args, state, f"{name} is {logs[key]}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save or control.should_evaluate or control.should_training_stop:
            self.check_weights(args, state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_save or control.should_evaluate:
            self.check_weights(args, state, model)

    def on_save(self, args, state, control, **kwargs):
        self.last_saved = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    def check_weights(self, args, state, model) -> None:
        name = non_finite_parameter(model)
        if name is not None:
            self.stop(args, state, f"the weights of {name} hold NaN or inf values")

    def stop(self, args, state, problem: str):
        raise divergence_error(
            f"step {state.global_step}",
            problem,
            args.output_dir,
            self.last_saved or args.resume_from_checkpoint,
            f"Lower --learning_rate (this run's: {args.learning_rate:g}) and run again; a run that diverges at any "
            "learning rate points at its data or at a setting that scales the loss or its gradients.",
        )


# What the Trainer's progress bar shows of each log, when the run logged it; every value goes to TensorBoard.
PROGRESS_POSTFIX = ("loss", "eval_loss", "eval_accuracy")


class CompactProgress(ProgressCallback):
    """The Trainer's progress bar with the latest loss (and held-out accuracy) as its postfix, where the stock
    callback prints one dict per logging step on stdout (132 of them for train_sft.py --tiny) and draws a second bar
    for each evaluation, and one summary line at the end instead of the Trainer's {'train_runtime': ...} dict."""

    def __init__(self):
        super().__init__()
        self.postfix = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None:
            return
        if "train_runtime" in logs:  # the Trainer's last log, of the whole run
            self.training_bar.write(
                f"Trained {state.global_step} steps in {logs['train_runtime']:.0f} s, mean training loss "
                f"{logs['train_loss']:.4g}."
            )
            return
        self.postfix |= {key: f"{logs[key]:.4g}" for key in PROGRESS_POSTFIX if key in logs}
        self.training_bar.set_postfix(self.postfix, refresh=False)

    def on_prediction_step(self, args, state, control, **kwargs):
        """No second bar for an evaluation during training: its result joins the training bar's postfix, and a bar
        drawn below another moves the cursor with terminal escape codes ("\x1b[A"), garbage in a log file."""
        if self.training_bar is None:
            super().on_prediction_step(args, state, control, **kwargs)


def train_stage(trainer, settings: dict, resume_from_checkpoint: str | bool | None):
    """Train a Trainer stage with the callbacks every one runs with, and return the Trainer's result: the run's
    settings saved in each periodic checkpoint, a stop on divergence, and the marks on periodic saves (added after the
    stop, so that a run stopped before a save marks nothing)."""
    trainer.add_callback(SaveRunSettings(settings))
    trainer.add_callback(StopOnDivergence())
    trainer.add_callback(MarkPeriodicSaves())
    return trainer.train(resume_from_checkpoint=resume_from_checkpoint)


def compact_progress(trainer) -> None:
    """Swap the Trainer's progress bar for `CompactProgress` (none with --disable_tqdm, which asks for plain logs)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress)


def check_report_to(report_to: list[str]) -> None:
    """The Trainer stages' --report_to, checked before any model loads: each name one transformers reports to, and its
    package installed (`report_to` as TrainingArguments leaves it: "none" made [], "all" the installed ones). The
    Trainer checks neither before the model has loaded, and then fails with a traceback."""
    names = list(report_to or [])
    if len(names) > 1 and ("none" in names or "all" in names):
        raise errors.ArgumentError(
            f"--report_to {' '.join(names)}: none (no tracker) and all (every installed one) stand alone; otherwise "
            f"name the trackers, such as --report_to tensorboard wandb."
        )
    unknown = [name for name in names if name not in integrations.INTEGRATION_TO_CALLBACK]
    if unknown:
        raise errors.ArgumentError(
            f"--report_to {errors.join_names([errors.shown(name) for name in unknown])}: not a tracker transformers "
            f"reports to. Choose from {errors.join_names(list(integrations.INTEGRATION_TO_CALLBACK))}, or none, or "
            "all."
        )
    # What each name needs, as its callback checks it: the check, and the pip package that satisfies it.
    needs = {
        "azure_ml": (integrations.is_azureml_available, "azureml-sdk"),
        "comet_ml": (integrations.is_comet_available, "comet-ml"),
        "mlflow": (integrations.is_mlflow_available, "mlflow"),
        "neptune": (integrations.is_neptune_available, "neptune"),
        "tensorboard": (integrations.is_tensorboard_available, "tensorboard"),
        "trackio": (integrations.is_trackio_available, "trackio"),
        "wandb": (integrations.is_wandb_available, "wandb"),
        "codecarbon": (integrations.is_codecarbon_available, "codecarbon"),
        "clearml": (integrations.is_clearml_available, "clearml"),
        "dagshub": (integrations.is_dagshub_available, "dagshub mlflow"),
        "flyte": (integrations.is_flytekit_available, "flytekit"),
        "dvclive": (integrations.is_dvclive_available, "dvclive"),
        "swanlab": (integrations.is_swanlab_available, "swanlab"),
    }
    if "kubeflow" in names and not integrations.is_kubeflow_available():
        raise errors.ArgumentError(
            "--report_to kubeflow reports to a Kubeflow TrainJob, and KUBEFLOW_TRAINER_SERVER_URL, which the TrainJob "
            "sets, is not set: run inside one, or leave kubeflow out of --report_to."
        )
    missing = [name for name in names if name in needs and not needs[name][0]()]
    trackers.refuse_missing(missing, lambda names: " ".join(needs[name][1] for name in names))
