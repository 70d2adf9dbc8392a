"""train_ppo.py's experiment trackers (--report_to): the names checked before anything loads, and one object through
which the run logs, so that every tracker gets the same tags at the same steps.

Scalars go to every tracker through accelerate (Accelerator(log_with=...), accelerator.log). TensorBoard is a tracker
of our own (TensorBoardRun): accelerate's TensorBoardTracker writes to <logging_dir>/<project_name>, and its project
name is every other tracker's project too (a W&B project per run), and it writes the run's settings as hparams into
a folder of their own inside the run; ours writes into the run's folder, tensorboard/<stage>/<time>, and a resumed run
continues it with SummaryWriter's purge_step, as before there were other trackers.
"""

import importlib.util
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, get_available_trackers

from hfppo import errors

PROJECT = "hf-ppo"  # the project of every tracker that has one (W&B, Trackio, MLflow's experiment, ...)
# accelerate's trackers (accelerate.utils.LoggerType), with the pip package that installs each.
PACKAGES = {
    "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow", "comet_ml": "comet-ml",
    "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "aim": "aim",
}  # fmt: skip
# What a text entry (the sample answers' Markdown table, the reward-hacking line) becomes in each tracker that takes
# one: accelerate's log() turns a str into text for these two (TensorBoard's add_text at the step; Comet's
# log_other, which keeps the latest only) ...
TEXT_AS_STRING = ("tensorboard", "comet_ml")
# ... and these two have accelerate's log_table: a table of one cell holding the text, at the step. The others'
# log() takes numbers only (MLflow, ClearML's scalars and DVCLive drop a str with a warning; SwanLab, Aim and
# Trackio take numbers or their own media types): they get the scalars, and the text stays out.
TEXT_AS_TABLE = ("wandb", "clearml")
# transformers' report_to names (the Trainer stages') that accelerate has no tracker for.
TRAINER_ONLY = ("azure_ml", "codecarbon", "dagshub", "flyte", "neptune", "kubeflow")
# Each tracker's keyword for the run's name in its init (the others name their runs themselves).
RUN_NAME_KEYWORD = {"wandb": "name", "trackio": "name", "mlflow": "run_name"}


def installed() -> list[str]:
    """The trackers of PACKAGES whose package is installed, in PACKAGES' order (accelerate's own check; TensorBoard's
    is the tensorboard package itself, which torch's SummaryWriter needs: accelerate also counts tensorboardX)."""
    available = {str(tracker) for tracker in get_available_trackers()}
    found = {"tensorboard"} if importlib.util.find_spec("tensorboard") is not None else set()
    return [name for name in PACKAGES if name in available - {"tensorboard"} | found]


def resolve(report_to: list[str] | str) -> list[str]:
    """--report_to as transformers' TrainingArguments reads it: "none" alone is no tracker, "all" alone every
    installed one; else the names given (once each). A name accelerate has no tracker for, or whose package is not
    installed, is an ArgumentError, raised before any model loads."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if names in ([], ["none"]):  # [] too: what an earlier call made of none
        return []
    if names == ["all"]:
        return installed()
    if "none" in names or "all" in names:
        raise errors.ArgumentError(
            f"--report_to {' '.join(names)}: none (no tracker) and all (every installed one) stand alone; otherwise "
            f"name the trackers, such as --report_to tensorboard wandb."
        )
    unknown = [name for name in names if name not in PACKAGES]
    if unknown:
        trainer_only = [name for name in unknown if name in TRAINER_ONLY]
        why = (
            f" ({errors.join_names(trainer_only)}: the Trainer stages report to it through transformers, and "
            "train_ppo.py logs through accelerate's trackers, which have none for it)"
            if trainer_only
            else ""
        )
        raise errors.ArgumentError(
            f"--report_to {errors.join_names(unknown)}: not a tracker train_ppo.py can log to{why}. Choose from "
            f"{errors.join_names(list(PACKAGES))}, or none, or all."
        )
    names = list(dict.fromkeys(names))
    missing = [name for name in names if name not in installed()]
    refuse_missing(missing, lambda names: " ".join(PACKAGES[name] for name in names))
    return names


def refuse_missing(missing: list[str], install: Callable[[list[str]], str]) -> None:
    """The ArgumentError for the trackers --report_to asks for whose packages are `missing` (this script's and the
    Trainer stages'); `install(missing)`: what pip installs."""
    if missing:
        them, its = ("it", "its package is") if len(missing) == 1 else ("them", "their packages are")
        packages = " ".join(dict.fromkeys(install(missing).split()))  # once each: dagshub needs mlflow too
        raise errors.ArgumentError(
            f"--report_to asks for {errors.join_names(missing)}, and {its} not installed, so the run could not log "
            f"to {them}. Install {them} (pip install {packages}) and run again, or leave {them} out of --report_to "
            "(--report_to none: no tracker; tensorboard, the default, comes with the pipeline's requirements)."
        )


class TensorBoardRun(GeneralTracker):
    """TensorBoard as an accelerate tracker writing into `run_dir`, the run's own folder, and continuing it from
    `purge_step` when the run is resumed (what the run logged from that step on is dropped, so the curves cover every
    update once). Numbers go to add_scalar, text to add_text (TensorBoard's Text tab). The run's settings are not
    logged: the event files hold what the run logged before there were other trackers."""

    name = "tensorboard"
    requires_logging_directory = False

    def __init__(self, run_dir: Path, purge_step: int | None):
        super().__init__()
        self.run_dir, self.purge_step = run_dir, purge_step
        self.writer = None

    def start(self):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.run_dir, purge_step=self.purge_step)

    @property
    def tracker(self):
        return self.writer

    def log(self, values: dict, step: int | None = None, **kwargs):
        for tag, value in values.items():
            if isinstance(value, str):
                self.writer.add_text(tag, value, step)
            else:
                self.writer.add_scalar(tag, value, step)

    def finish(self):
        self.writer.close()


class Trackers:
    """Where the run's figures go, on the main process: `log` sends scalars to every tracker, `text` a text entry to
    those that take one (TEXT_AS_STRING, TEXT_AS_TABLE), `finish` closes them all (the TensorBoard events on disk)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def log(self, values: dict[str, float], step: int) -> None:
        self.accelerator.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        for tracker in self.accelerator.trackers:
            if tracker.name in TEXT_AS_STRING:
                tracker.log({tag: text}, step=step)
            elif tracker.name in TEXT_AS_TABLE:
                tracker.log_table(tag, columns=[tag], data=[[text]], step=step)

    def finish(self) -> None:
        """Each tracker's finish (accelerator.end_training would also destroy the process group, which a run that
        stops on a divergence, in the middle of its processes' work, must not)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()


def start(
    accelerator: Accelerator,
    names: list[str],
    run_name: str,
    settings: dict,
    run_dir: Path | None = None,
    purge_step: int | None = None,
) -> Trackers | None:
    """Start the trackers `names` (resolve's) under PROJECT, the run named `run_name` where a tracker takes a name,
    with the run's `settings` as its configuration (numbers, words and None as they are, anything else as text);
    TensorBoard in `run_dir`, from `purge_step`. Every process calls this; the main one gets the Trackers, the others
    None (accelerate starts and logs on the main process only)."""
    if "tensorboard" in names:
        # Added here, not in make_accelerator's log_with: its folder is known only after the resume point is read.
        accelerator.log_with.append(TensorBoardRun(run_dir, purge_step))
    config = {
        key: value if value is None or isinstance(value, bool | int | float | str) else str(value)
        for key, value in settings.items()
    }
    init_kwargs = {name: {keyword: run_name} for name, keyword in RUN_NAME_KEYWORD.items() if name in names}
    accelerator.init_trackers(PROJECT, config=config, init_kwargs=init_kwargs)
    return Trackers(accelerator) if accelerator.is_main_process else None


def log_with(names: list[str]) -> list[str] | None:
    """Accelerator's log_with for `names`: every tracker but TensorBoard (start adds ours), or None for none (an
    empty list would have accelerate warn that no tracker is installed)."""
    return [name for name in names if name != "tensorboard"] or None


def describe(names: list[str], run_dir: Path | None, run_name: str) -> str:
    """Where the run logs, for its first line: "TensorBoard: <run_dir>", the other trackers with the project and run
    they log to, or that it logs to none."""
    others = [name for name in names if name != "tensorboard"]
    parts = [f"TensorBoard: {run_dir}"] if "tensorboard" in names else []
    parts += [f"{errors.join_names(others)}: project {PROJECT}, run {run_name}"] if others else []
    return "; ".join(parts) or "no tracker (--report_to none)"
