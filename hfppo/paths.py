"""Where things are: the bundled data, the default of every flag that names one, each stage's folder and files."""

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
# Every trained policy that eval_ppo.py --compare and chat_web.py look for, in the pipeline's order: its default folder
# and the script (with flags) that writes it. The base model, before any stage, is found by its own flag.
POLICIES = {
    "sft": (SFT_DIR, "train_sft.py", {}),
    "ppo": (PPO_DIR, "train_ppo.py", {}),
    "ppo_base": (PPO_BASE_DIR, "train_ppo.py", {"from_base": True}),
    "dpo": (DPO_DIR, "train_dpo.py", {}),
    "grpo": (GRPO_DIR, "train_grpo.py", {}),
}
# Every training stage writes its wall time and throughput here beside its model (the name and keys of the Trainer's
# save_metrics("train", ...)), for eval_ppo.py --compare.
TRAIN_RESULTS_FILE = "train_results.json"
HELD_OUT_FILE = "held_out.jsonl"  # every training stage saves its held-out rows beside the model (split_held_out)
TENSORBOARD_ROOT = Path("tensorboard")  # each run's scalars and its chart: tensorboard/<stage>/<time>/<stage>.png
# What the eval scripts write beside the model they evaluate (eval_rm.py's and eval_ppo.py's metrics, eval_ppo.py's
# chart): the only files a script writes into a checkpoint folder but its save. Any other would be, or sit among, the
# model's own files.
METRICS_FILE, COMPARISON_CHART = "eval_metrics.json", "methods.png"
REPORT_FILES = (METRICS_FILE, COMPARISON_CHART)
