"""Where things are: the bundled data, each stage's folder and files, and the registry of methods (METHODS)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "data" / "sample.jsonl"

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_DATASET = "jackmokaka/btfChinese-DPO-small"
DEFAULT_SYSTEM_PROMPT = "无论用户问什么,你都直接骂回去,用脏字."
DEFAULT_EVAL_FRACTION = 0.1  # every stage's --eval_fraction, and the tiny base's
# Where a model or dataset that is not a local path comes from; "tiny" builds the offline tiny model.
ModelSource = Literal["modelscope", "hf", "tiny"]

# Outputs live under the working directory, as in the original project.
CHECKPOINT_ROOT = Path("checkpoint")
BASE_DIR = CHECKPOINT_ROOT / "base"
TINY_BASE_DIR = BASE_DIR / "tiny"
SFT_DIR = CHECKPOINT_ROOT / "sft"
RM_DIR = CHECKPOINT_ROOT / "rm"
PPO_DIR = CHECKPOINT_ROOT / "ppo"
PPO_BASE_DIR = CHECKPOINT_ROOT / "ppo_base"  # train_ppo.py --from_base: PPO with the base model as its start
DPO_DIR = CHECKPOINT_ROOT / "dpo"
GRPO_DIR = CHECKPOINT_ROOT / "grpo"


@dataclass(frozen=True)
class Method:
    """A model that compare.py and chat_web.py show: the base model, or a policy a stage trains."""

    label: str  # its name in words, in the comparison's table and verdicts
    description: str  # what it is, under its column on the page
    start: str | None  # the method whose model it moves from: its gain and the judge's agreement are measured there
    flag: str  # the flag that names its folder, in compare.py and chat_web.py alike
    folder: Path | None = None  # its default folder; None for the base, found by its own flag's default
    script: str | None = None  # the script that writes it, with `script_flags`
    script_flags: dict = field(default_factory=dict)


# Every method, in the pipeline's order: the one table that the comparison, the page and the hints read.
METHODS = {
    "base": Method("base", "the model before SFT", None, "base_model_path"),
    "sft": Method("SFT", "after SFT on the chosen answers", "base", "sft_model_path", SFT_DIR, "train_sft.py"),
    "ppo": Method("PPO", "PPO (LoRA) on the SFT model", "sft", "ppo_model_path", PPO_DIR, "train_ppo.py"),
    "ppo_base": Method(
        "PPO from the base",
        "PPO (LoRA) on the base model",
        "base",
        "ppo_base_model_path",
        PPO_BASE_DIR,
        "train_ppo.py",
        {"from_base": True},
    ),
    "dpo": Method("DPO", "DPO on the SFT model", "sft", "dpo_model_path", DPO_DIR, "train_dpo.py"),
    "grpo": Method("GRPO", "GRPO on the SFT model", "sft", "grpo_model_path", GRPO_DIR, "train_grpo.py"),
}
# The trained policies of METHODS, which compare.py and chat_web.py look for: (their default folder, the
# script that writes it, its flags). The base model, before any stage, is found by its own flag.
POLICIES = {name: (m.folder, m.script, m.script_flags) for name, m in METHODS.items() if m.script}
# Every training stage writes its wall time and throughput here beside its model (the name and keys of the Trainer's
# save_metrics("train", ...)), for compare.py.
TRAIN_RESULTS_FILE = "train_results.json"
HELD_OUT_FILE = "held_out.jsonl"  # every training stage saves its held-out rows beside the model (split_held_out)
ADAPTER_BASE_FILE = "adapter_base.json"  # beside every adapter: the model it was trained on (hfppo/adapters.py)
TENSORBOARD_ROOT = Path("tensorboard")  # each run's scalars and its chart: tensorboard/<stage>/<time>/<stage>.png
# What the eval scripts write beside the model they evaluate (eval_rm.py's and compare.py's metrics, compare.py's
# chart): the only files a script writes into a checkpoint folder but its save. Any other would be, or sit among, the
# model's own files.
METRICS_FILE, COMPARISON_CHART = "eval_metrics.json", "methods.png"
REPORT_FILES = (METRICS_FILE, COMPARISON_CHART)
