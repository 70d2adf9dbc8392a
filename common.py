"""What every stage must do identically to be correct: paths, data loading and validation, chat formatting,
model resolution, the offline tiny preset, and the chart of a run's TensorBoard scalars.

    python -c "import common; print(common.load_preference_data(common.SAMPLE_DATA))"
"""

import atexit
import codecs
import csv
import ctypes
import dataclasses
import difflib
import errno
import fcntl
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args, get_type_hints

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from accelerate.utils import load as load_state_file
from datasets import Dataset
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, ProgressCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import TrlParser

# A stage's datasets.map, filter and to_json calls run over a few hundred rows in well under a second each, yet drew
# five to eight progress bars per stage (TRL's tokenize, truncate, drop-masked, build-labels passes): bars that say
# nothing. Training and generation keep theirs.
datasets.disable_progress_bars()
# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias in every PeftModel it builds or loads
# (PPO, DPO, GRPO, the comparison, the chat page): a FutureWarning no user can act on, silenced by its exact text where
# it is raised.
warnings.filterwarnings(
    "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning, "transformers.modeling_utils"
)

# glibc's mallopt parameters (malloc.h), the variables a user sets them with, and what keep_freed_memory sets: blocks
# up to 32 MiB come from the heap from the start (the most glibc's own adaptive threshold reaches), and the heap's free
# top goes back to the kernel past 2 GiB (mallopt takes an int), not past twice that threshold.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 2**31 - 1


def keep_freed_memory() -> None:
    """Have glibc keep the memory a training step frees for the next step, instead of handing it back to the kernel.

    glibc returns a freed block above its mmap threshold to the kernel, and trims the heap's free top past twice that
    threshold (at most 64 MiB). A training step allocates the same activations again, so each of their pages comes
    back as a fault on a freshly zeroed page: on a CPU, most of a stage's kernel time (README, "The tiny preset").
    PyTorch's CPU tuning guide gets the same by preloading jemalloc or tcmalloc. Left alone where the C library has no
    mallopt (not glibc), or where the user set glibc's own variables."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt") and not any(key in os.environ for key in MALLOC_ENVIRONMENT):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


keep_freed_memory()

ROOT = Path(__file__).resolve().parent
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
# The LoRA adapter each RL method trains on its starting model (PPO, DPO, GRPO): the same rank, scale and layers, so
# that the methods change the model through the same parameters and compare on equal terms. The original's PPO values.
LORA_R = 32
LORA_ALPHA = 8
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Every training stage writes its wall time and throughput here beside its model (the name and keys of the Trainer's
# save_metrics("train", ...)), for eval_ppo.py --compare.
TRAIN_RESULTS_FILE = "train_results.json"
# The lexicon judge's word lists (see judge_score): rude and polite markers, one a line, `#` starts a comment line.
LEXICON_FILES = {"rude": ROOT / "data" / "lexicon" / "rude.txt", "polite": ROOT / "data" / "lexicon" / "polite.txt"}
HELD_OUT_FILE = "held_out.jsonl"  # every training stage saves its held-out rows beside the model (split_held_out)
TENSORBOARD_ROOT = Path("tensorboard")  # each run's scalars and its chart: tensorboard/<stage>/<time>/<stage>.png
# Charts: panels of 4 x 3 inches at 100 dpi, 3 a row, so a chart is at most 1200 px wide and reads at README width;
# the smoothing weight is TensorBoard's default, so the chart looks like the TensorBoard page.
CHART_COLUMNS = 3
CHART_PANEL_SIZE = (4, 3)
CHART_DPI = 100
CHART_SMOOTHING = 0.6

# A checkpoint is complete when its marker (config.json; adapter_config.json for a LoRA adapter) sits beside these.
CHECKPOINT_MARKERS = ("config.json", "adapter_config.json")
CHECKPOINT_FILES = {"weights": ("*.safetensors", "pytorch_model*.bin"), "tokenizer": ("tokenizer_config.json",)}
# A save writes <folder>.partial, renames it <folder>.ready once every file is written (one atomic step), then swaps:
# <folder> -> <folder>.old, <folder>.ready -> <folder>, and deletes <folder>.old. Killed at any instant, it leaves one
# complete checkpoint, <folder> or <folder>.ready, and the next load or save finishes the swap (`settle_checkpoint`).
# .<folder>.lock, beside it, is held by the run that writes the folder.
PARTIAL, READY, OLD, LOCK = ".partial", ".ready", ".old", ".lock"
PERIODIC_CHECKPOINT = re.compile(r"checkpoint-\d+")  # the Trainer's and train_ppo.py's; kept across a final save
# TRL's trainers write a model card into the output folder with each periodic checkpoint: beside one, it is theirs.
TRAINER_MODEL_CARD = "README.md"
# The JSON files of a checkpoint that loading it reads (transformers, peft, tokenizers, eval_ppo.py --compare), each a
# mapping, with the keys this pipeline reads from it: require_checkpoint reads every one present before any library
# does, so that a truncated or emptied one is named with the command that writes it again, not met as a library's
# traceback (or, for generation_config.json, silently replaced by defaults), nor after an evaluation has run.
CHECKPOINT_JSON = {
    "config.json": (),
    "adapter_config.json": (),  # base_model_name_or_path, read where an adapter is loaded (adapter_base)
    "generation_config.json": (),
    "tokenizer.json": (),
    "tokenizer_config.json": (),
    "special_tokens_map.json": (),
    "added_tokens.json": (),
    "vocab.json": (),
    "model.safetensors.index.json": (),
    TRAIN_RESULTS_FILE: ("train_runtime", "train_samples_per_second"),
}
# What a model folder must be for each role it plays, by its config's architecture (and, for a reward model, a trained
# score head in its weights: a language model loaded as a reward model gets a random head, silently).
ROLES = {
    "language model": ("ForCausalLM",),
    "reward model": ("ForSequenceClassification",),
    "critic": ("ForCausalLM", "ForSequenceClassification"),
    "adapter": (),  # a LoRA adapter: adapter_config.json, no config.json
}
SCORE_HEAD = "score.weight"
# The kind of model (see model_kind) each training script writes with its default flags, for the hints that print it.
WRITES = {
    "train_sft.py": "language model",
    "train_rm.py": "reward model",
    "train_ppo.py": "adapter",
    "train_dpo.py": "adapter",
    "train_grpo.py": "adapter",
}
_HELD_LOCKS = {}  # this process's output-folder locks, by folder, open until it ends
# What the eval scripts write beside the model they evaluate (eval_rm.py's and eval_ppo.py's metrics, eval_ppo.py's
# chart): the only files a script writes into a checkpoint folder but its save. Any other would be, or sit among, the
# model's own files.
METRICS_FILE, COMPARISON_CHART = "eval_metrics.json", "methods.png"
# Room a report needs on its disk, checked before the work: more than the largest (eval_ppo's metrics with every
# answer, its chart) takes.
REPORT_BYTES = 2**20
REPORT_FILES = (METRICS_FILE, COMPARISON_CHART)
MAX_LINK_HOPS = 40  # Linux follows at most 40 links in a path (ELOOP beyond)
TEMPORARY = ".tmp"  # in the name of a file that `atomic_file` writes before renaming it into place
# Places that no script writes into, with what a write there would do: the bundled data (the sample, the lexicon, the
# style pairs) and, for an output folder, which a save replaces whole, the TensorBoard runs, this run's own included.
PROTECTED_AREAS = {"the pipeline's data folder": (ROOT / "data", "would overwrite the data that every stage reads")}
OUTPUT_DIR_AREAS = {
    "the TensorBoard runs' folder": (TENSORBOARD_ROOT, "would delete the event files this run logs there"),
}
# Settings that change neither a run's data, nor its randomness, nor its optimisation: where it writes, what and how
# often it logs, saves and evaluates. A resumed run may change these, and nothing else.
RESUMABLE_SETTINGS = re.compile(
    r"output_dir|overwrite_output_dir|resume_from_checkpoint|run_name|report_to|logging_.*|log_.*|save_.*|"
    r"resume_resets_state|"  # what a resume may start afresh (check_training_state), not how the run trains
    r"eval_(?!fraction$).*|"  # how often the held-out rows are evaluated, but not which rows they are
    r"per_device_eval_batch_size|push_to_hub|hub_.*|dataloader_num_workers|dataloader_pin_memory|disable_tqdm|tiny|"
    r"local_rank|num_eval_questions"
)
RUN_SETTINGS_FILE = "run_settings.json"  # in each periodic checkpoint

REQUIRED_COLUMNS = ("question", "chosen", "rejected")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
JSON_WHITESPACE = " \t\r"  # with "\n", the only whitespace JSON allows between values (RFC 8259)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str only where an escape held half a pair (_validate)

# Qwen's ChatML special tokens, in Qwen's id order. pad must differ from eos: a collator that masks pad in the
# labels would otherwise also mask the <|im_end|> the model has to learn to stop on.
PAD_TOKEN, CHAT_START_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# The tiny preset: a Qwen2-architecture model small enough to train on a 2-core CPU in seconds.
TINY_SEED = 0
TINY_VOCAB_SIZE = 6000  # an upper bound: the sample's characters and ASCII words fill about 2,300
TINY_MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,  # as Qwen2.5-0.5B
)
# Qwen2.5-Instruct's generation_config.json, so the tiny model carries the same sampling defaults as the real one.
QWEN_GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
# Random weights babble; the real base answers politely. A short SFT on the polite (`rejected`) answers gives the
# tiny base that starting point, so the demo shows what the real run shows. Short on purpose: the reward model starts
# from this base, and after 10 epochs the base had memorised the polite answers, which the reward model then told
# apart as "text the base knows" rather than by style. With 4 it builds in under half the time and the reward model
# ranks data/style_pairs.jsonl (pairs in styles the sample lacks) no worse: 0.75 against 0.73, means over seeds on one
# machine with the earlier tokenizer (data/README.md, with the sweep).
TINY_BASE_TRAINING = dict(
    num_train_epochs=4,
    learning_rate=3e-3,
    per_device_train_batch_size=8,
    lr_scheduler_type="cosine",
    warmup_steps=10,
    max_length=256,
)
TINY_RECIPE_FILE = "tiny_recipe.json"  # in the tiny base's folder: what it was built from (tiny_recipe)
# Ctrl-C: the status a shell gives a process that SIGINT ended (128 + the signal's number), and what user_errors then
# reports on: the output folder this process locked (lock_output_dir), when, and whether it existed then.
INTERRUPTED_STATUS = 128 + signal.SIGINT
_RUN = {}


class PipelineError(Exception):
    """A problem the user can fix (bad data, missing checkpoint, wrong flag): shown as one message, no traceback."""


class ArgumentError(PipelineError):
    """A bad flag or --config file: exit status 2, as argparse's own usage errors."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PipelineError into a one-paragraph message: exit status 2 for a bad argument, 1 for anything else; and
    Ctrl-C into one line on what the run kept (`interrupted_run`), exit status 130."""
    try:
        yield
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ArgumentError) else 1)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches every process of an `accelerate launch`, and the launcher sends its workers
        # another: that one must not break into the line, and the first process speaks for them all.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for bar in list(tqdm._instances):  # bars left open would be drawn again at exit, below the line
                bar.close()
            if int(os.environ.get("RANK", "0")) == 0:  # on a line of its own, after the terminal's ^C
                print(f"\nInterrupted: {interrupted_run()}", file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        sys.exit(INTERRUPTED_STATUS)


class Parser(TrlParser):
    """TRL's parser, whose errors raise ArgumentError instead of printing the usage of every flag and exiting
    (argparse's documented way to change that is overriding `error`)."""

    def error(self, message: str):
        raise ArgumentError(f"{message.rstrip('.')}. {HELP_HINT}")


HELP_HINT = "Run with --help to list every flag and its default."

# The valid range of every numeric setting, by field name, checked for all of a script's dataclasses before any data
# or model loads; "DPOConfig.beta" is the range of one dataclass's field where a name means different things in two
# (it outranks the plain name). Intervals in the usual notation: [1, inf) means >= 1, (0, 1] means 0 < x <= 1; NaN and
# +-inf are outside every one. Unset (None) is always allowed: it means "the default behaviour" where a field accepts
# it. tests/test_ranges.py fails for a numeric field of any script's parser that has no range here.
MAX_SEED = 2**32 - 1  # numpy's RandomState (transformers' set_seed seeds it) takes [0, 2**32 - 1]
# A loss term's weight: published ones are below 10 (KL coefficients 0.001 to 0.2, DPO's beta 0.1 to 0.5); at 1000 the
# term already swamps every other, and far larger ones only push the loss toward float32's overflow (3.4e38), inf and
# then NaN weights (--kl_coef 1e308 crashes, DPO's --beta 1e308 gives NaN).
MAX_COEFFICIENT = 1000
MAX_PORT = 65535  # a TCP port is 16 bits
NUMERIC_RANGES = {
    # counts: of rows, tokens, steps, passes
    "per_device_train_batch_size": "[1, inf)",
    "per_device_eval_batch_size": "[1, inf)",
    "gradient_accumulation_steps": "[1, inf)",
    "local_rollout_forward_batch_size": "[1, inf)",
    "num_mini_batches": "[1, inf)",
    "num_ppo_epochs": "[1, inf)",
    "total_episodes": "[1, inf)",
    "batch_size": "[1, inf)",
    "max_length": "[1, inf)",
    "max_prompt_length": "[1, inf)",
    "response_length": "[1, inf)",
    "max_new_tokens": "[1, inf)",
    "num_examples": "[0, inf)",
    "num_eval_questions": "[0, inf)",
    "eval_batch_size": "[1, inf)",
    "lora_r": "[1, inf)",
    "warmup_steps": "[0, inf)",
    "save_steps": "[0, inf)",
    "save_total_limit": "[0, inf)",
    "logging_steps": "(0, inf)",
    "eval_steps": "(0, inf)",
    "num_train_epochs": "(0, inf)",
    "max_steps": "[-1, inf)",  # -1 (or 0): num_train_epochs decides
    "num_updates": "[1, inf)",
    "max_completion_length": "[1, inf)",
    "generation_batch_size": "[1, inf)",
    "steps_per_generation": "[1, inf)",
    "num_iterations": "[1, inf)",
    "num_generations": "[2, inf)",  # GRPO's advantage compares the answers to one question: two at least
    "num_generations_eval": "[1, inf)",
    "num_completions_to_print": "[0, inf)",
    "max_tool_calling_iterations": "[0, inf)",
    "precompute_ref_batch_size": "[1, inf)",
    "ref_model_sync_steps": "[1, inf)",
    "eval_accumulation_steps": "[1, inf)",
    "eval_delay": "[0, inf)",
    "torch_empty_cache_steps": "[1, inf)",
    "pad_to_multiple_of": "[1, inf)",  # or a word (auto, none) the config itself reads
    # machinery: processes, workers, ports, timeouts
    "seed": f"[0, {MAX_SEED}]",
    "data_seed": f"[0, {MAX_SEED}]",
    "local_rank": "[-1, inf)",  # -1: not distributed
    "dataloader_num_workers": "[0, inf)",
    "dataloader_prefetch_factor": "[1, inf)",
    "dataset_num_proc": "[1, inf)",
    "ddp_bucket_cap_mb": "[1, inf)",
    "ddp_timeout": "[1, inf)",
    "port": f"[1, {MAX_PORT}]",
    "vllm_server_port": f"[1, {MAX_PORT}]",
    "vllm_group_port": f"[1, {MAX_PORT}]",
    "vllm_server_timeout": "(0, inf)",
    "vllm_tensor_parallel_size": "[1, inf)",
    "vllm_gpu_memory_utilization": "(0, 1]",
    "vllm_max_model_length": "[1, inf)",
    "peak_tflops": "(0, inf)",
    # optimisation
    "learning_rate": "(0, inf)",
    "critic_learning_rate": "(0, inf)",
    "weight_decay": "[0, inf)",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": "(0, inf)",
    "lora_alpha": "(0, inf)",
    "lora_dropout": "[0, 1)",
    "center_rewards_coefficient": "[0, inf)",
    # Clipping to 0 zeroes PPO's gradients; the Trainer's stages read 0 as "no clipping".
    "max_grad_norm": "[0, inf)",
    "PPOConfig.max_grad_norm": "(0, inf)",
    "label_smoothing_factor": "[0, 1)",
    "neftune_noise_alpha": "[0, inf)",
    "router_aux_loss_coef": f"[0, {MAX_COEFFICIENT}]",
    # PPO
    "kl_coef": f"[0, {MAX_COEFFICIENT}]",
    "cliprange": "(0, inf)",
    "cliprange_value": "(0, inf)",
    "vf_coef": f"[0, {MAX_COEFFICIENT}]",
    "missing_eos_penalty": f"[0, {MAX_COEFFICIENT}]",
    "gamma": "[0, 1]",
    "lam": "[0, 1]",
    # DPO. A negative beta learns the opposite preference; 0 learns nothing (TRL: the deviation from the reference).
    "DPOConfig.beta": f"(0, {MAX_COEFFICIENT}]",
    "label_smoothing": "[0, 0.5)",  # Robust DPO's flip probability (TRL: in [0, 0.5))
    "discopop_tau": "(0, inf)",
    "f_alpha_divergence_coef": "(0, inf)",
    "ld_alpha": "[0, 1]",
    "ref_model_mixup_alpha": "[0, 1]",
    # GRPO. beta is the KL term's weight: 0, TRL's default, is no KL term (and no reference model); below 0 it would
    # reward drifting from the reference.
    "GRPOConfig.beta": f"[0, {MAX_COEFFICIENT}]",
    "epsilon": "(0, inf)",
    "epsilon_high": "(0, inf)",
    "delta": "(0, inf)",
    "sapo_temperature_pos": "(0, inf)",
    "sapo_temperature_neg": "(0, inf)",
    "vespo_k_pos": "[0, inf)",
    "vespo_k_neg": "[0, inf)",
    "vespo_lambda_pos": "[0, inf)",
    "vespo_lambda_neg": "[0, inf)",
    "top_entropy_quantile": "[0, 1]",
    "entropy_coef": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_min": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_max": f"[0, {MAX_COEFFICIENT}]",
    "entropy_coef_delta": "(0, inf)",
    "entropy_target": "[0, inf)",
    "off_policy_mask_threshold": "(0, inf)",
    "vllm_importance_sampling_cap": "(0, inf)",
    "vllm_importance_sampling_clip_min": "[0, inf)",
    "vllm_importance_sampling_clip_max": "(0, inf)",
    # sampling. logits / temperature: below 0.01 sampling is greedy already (a logit gap of 1 becomes e^-100), and far
    # smaller ones overflow the division (float16's 65504, float32's 3.4e38) into inf and NaN probabilities.
    "temperature": "[0.01, inf)",
    "top_p": "(0, 1]",
    "top_k": "[0, inf)",  # 0: no top-k filter
    "min_p": "[0, 1]",
    "repetition_penalty": "(0, inf)",
    # fractions of the data
    "sft_fraction": "(0, 1]",
    "eval_fraction": "[0, 1)",
}


def parse_args(parser: TrlParser, tiny_preset: dict, args: list[str] | None = None) -> tuple:
    """Parse the command line and `--config`; with `--tiny`, the stage's tiny preset replaces the defaults.

    Precedence, lowest first: dataclass defaults, tiny preset, `--config` file, command-line flags. Every problem with
    the flags or the file (an unknown flag or key, a bad choice or value, a missing or unreadable file) is an
    ArgumentError, raised before any data or model loads.
    """
    args = list(sys.argv[1:] if args is None else args)
    args, config_file = _pop_config_flag(args)
    config = _read_config(config_file, parser) if config_file else {}
    defaults = _namespace(parser, [])
    namespace = _namespace(parser, args, config)
    if namespace.get("tiny"):
        parser.set_defaults(**tiny_preset)
        namespace = _namespace(parser, args, config)
        undone = [key for key in tiny_preset if key in config and namespace[key] == defaults[key] != tiny_preset[key]]
        if undone:
            raise ArgumentError(
                f"--config {config_file} sets {_join(undone)} to the real run's values, which --tiny changes, and the "
                "file outranks --tiny (defaults < --tiny < --config < flags), so this would not be the tiny run. For "
                "the real run drop --tiny; for the tiny run, remove "
                f"{'that key' if len(undone) == 1 else 'those keys'} from the file (or set them with flags, which "
                "outrank it)."
            )
    check_values(namespace, parser.dataclass_types)
    parsed = []
    for dataclass_type in parser.dataclass_types:  # as HfArgumentParser.parse_args_into_dataclasses
        names = {f.name for f in dataclasses.fields(dataclass_type) if f.init}
        try:
            parsed.append(dataclass_type(**{name: value for name, value in namespace.items() if name in names}))
        except ValueError as error:  # the configs' own checks in __post_init__ (TrainingArguments has many)
            raise ArgumentError(f"{error} {HELP_HINT}") from error
    return tuple(parsed)


def check_values(namespace: dict, dataclass_types: tuple = ()) -> None:
    """Every numeric setting within its NUMERIC_RANGES range (finite), and bf16 only where a GPU has it."""
    for name, value in namespace.items():
        interval = field_range(name, dataclass_types)
        if interval is None or value is None:
            continue
        number = value
        if isinstance(value, str):  # a field that also takes words (pad_to_multiple_of: auto): its config reads those
            try:
                number = float(value)
            except ValueError:
                continue
        low, high = (float(bound) for bound in interval[1:-1].split(","))
        finite = isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
        above = finite and (number > low if interval[0] == "(" else number >= low)
        below = finite and (number < high if interval[-1] == ")" else number <= high)
        if not (above and below):
            raise ArgumentError(f"--{name} must be {_describe(interval)}, got {value!r}.")
    if namespace.get("bf16") and not bf16_available():
        where = "its GPU has no bf16 units" if torch.cuda.is_available() else "it has no GPU"
        raise ArgumentError(
            f"--bf16 True needs a GPU with bf16 units, and this machine has none ({where}): on a CPU, training in "
            "bf16 fails or runs many times slower than fp32. Leave --bf16 out: its default is on exactly where it "
            "helps."
        )


def field_range(name: str, dataclass_types: tuple = ()) -> str | None:
    """The NUMERIC_RANGES interval of field `name`: the entry of the dataclass that has it ("DPOConfig.beta"), else
    the name's own; None for a field with no range (a non-numeric one)."""
    for dataclass_type in dataclass_types:
        qualified = f"{dataclass_type.__name__}.{name}"
        if qualified in NUMERIC_RANGES and name in {f.name for f in dataclasses.fields(dataclass_type)}:
            return NUMERIC_RANGES[qualified]
    return NUMERIC_RANGES.get(name)


def _describe(interval: str) -> str:
    """ "[1, inf)" -> ">= 1", "(0, 1]" -> "in (0, 1]": the range as an error message says it."""
    low = interval[1:].split(",")[0]
    if interval.endswith("inf)"):
        return f"{'>' if interval[0] == '(' else '>='} {low}"
    return f"in {interval}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _pop_config_flag(args: list[str]) -> tuple[list[str], str | None]:
    """The arguments without `--config FILE` (or `--config=FILE`), and FILE."""
    found = [i for i, arg in enumerate(args) if arg == "--config" or arg.startswith("--config=")]
    if not found:
        return args, None
    if len(found) > 1:
        raise ArgumentError("--config is given more than once; merge the files into one.")
    (i,) = found
    if args[i] != "--config":
        return args[:i] + args[i + 1 :], args[i].removeprefix("--config=")
    if i + 1 == len(args) or args[i + 1].startswith("--"):
        raise ArgumentError("--config needs a YAML file: --config configs/<stage>.yaml.")
    return args[:i] + args[i + 2 :], args[i + 1]


def _read_config(path: str, parser: TrlParser) -> dict:
    """The settings of a --config YAML file, as TrlParser reads them (its `env:` mapping set as environment
    variables), with every key checked against the parser's fields and every choice against its choices."""
    import yaml

    try:
        with open(path, encoding="utf-8") as file:  # YAML's messages then name the file
            config = yaml.safe_load(file)
    except FileNotFoundError as error:
        raise ArgumentError(f"--config {path}: no such file. Pass the path of a YAML file.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ArgumentError(f"--config {path} could not be read ({error}).") from error
    except yaml.YAMLError as error:
        raise ArgumentError(f"--config {path} is not valid YAML: {' '.join(str(error).split())}") from error
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ArgumentError(
            f"--config {path} must be a YAML mapping of settings to values, like `learning_rate: 1.0e-5`; it holds "
            f"a {type(config).__name__}."
        )
    env = config.pop("env", {})
    if not isinstance(env, dict):
        raise ArgumentError(f"--config {path}: env must be a mapping of environment variables to values.")
    actions = {}
    for action in parser._actions:  # the field's own action first: a bool field may also have a --no_ flag
        if action.option_strings:
            actions.setdefault(action.dest, action)
    unknown = [key for key in config if key not in actions]
    if unknown:
        raise ArgumentError(
            f"--config {path}: {_unknown(unknown, list(actions), 'key')} The keys are the flags' names without --."
        )
    for key, value in config.items():
        # `key:` or `key: null`, which no flag can give either; unset only where the field takes None and None means
        # this script's default
        if value is None and (
            not _accepts_none(parser, key) or key in NULL_NOT_DEFAULT and actions[key].default is not None
        ):
            raise ArgumentError(
                f"--config {path}: {key} is empty (null), and --{key} needs a value. Give it one, or remove the key "
                "to keep the default."
            )
        # A number or bool is converted by the field's type as if given on the command line, so that `2.5` for an
        # integer is refused as `--per_device_train_batch_size 2.5` is; argparse checks no choice in a default.
        if isinstance(value, int | float) and actions[key].type is not None:
            config[key] = value = str(value)
        if actions[key].choices is not None and isinstance(value, str):
            value = actions[key].type(value) if actions[key].type else value
            if value not in actions[key].choices:
                raise ArgumentError(
                    f"--config {path}: {key} {value!r} is not one of {_join([str(c) for c in actions[key].choices])}."
                )
    os.environ.update({key: str(value) for key, value in env.items()})
    return config


# Fields whose type takes None where the libraries do not read None as the script's default: TrainingArguments saves
# to trainer_output for an output_dir of None (not checkpoint/<stage>) and refuses a report_to of None.
NULL_NOT_DEFAULT = ("output_dir", "report_to")


def _accepts_none(parser: TrlParser, name: str) -> bool:
    """Whether field `name` of the parser's dataclasses may be None (its type is Optional, `X | None`)."""
    for dataclass_type in parser.dataclass_types:
        hints = get_type_hints(dataclass_type)
        if name in hints:
            return type(None) in get_args(hints[name])
    return True


def _namespace(parser: TrlParser, args: list[str], config: dict | None = None) -> dict:
    """The parsed flags, by field name, with `config`'s values as defaults; unknown flags refused."""
    parser.set_defaults_with_config(**(config or {}))
    namespace, unknown = parser.parse_known_args(args)
    if unknown:
        flags = [arg.split("=")[0] for arg in unknown if arg.startswith("-")]
        if not flags:
            raise ArgumentError(
                f"unexpected {_join([repr(arg) for arg in unknown])}: every setting is a flag with its value, like "
                f"--learning_rate 1e-5. {HELP_HINT}"
            )
        # Each flag by its first spelling: --kl_coef, not also its alias --kl-coef.
        options = {option: action.option_strings[0] for option, action in parser._option_string_actions.items()}
        raise ArgumentError(f"{_unknown(flags, options, 'flag')} {HELP_HINT}")
    return vars(namespace)


def _unknown(names: list[str], valid: dict[str, str] | list[str], kind: str) -> str:
    """ "unknown flag --kl_coeff (did you mean --kl_coef?).", with the nearest valid names (difflib); `valid` may map
    each spelling to the name to suggest."""
    canonical = valid if isinstance(valid, dict) else {name: name for name in valid}
    parts = []
    for name in names:
        near = list(dict.fromkeys(canonical[match] for match in difflib.get_close_matches(name, canonical, n=5)))[:3]
        parts.append(f"{name} (did you mean {' or '.join(near)}?)" if near else name)
    return f"unknown {kind}{'s' if len(names) > 1 else ''} {_join(parts)}."


@dataclass
class StageArguments:
    """The flags every training stage shares; each script's ScriptArguments adds its own."""

    tiny: bool = field(
        default=False,
        metadata={
            "help": "Offline tiny preset: a tiny Qwen2 model built locally, the bundled data, CPU-sized settings."
        },
    )
    dataset_name: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Dataset id on the hub, or a local .jsonl/.json/.csv/.parquet file or folder."},
    )
    model_source: ModelSource = field(
        default="modelscope",
        metadata={"help": "Where to fetch a model or dataset that is not a local path; tiny builds the tiny model."},
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System prompt for rows whose `system` column is empty or missing."},
    )
    resume_resets_state: bool = field(
        default=False,
        metadata={
            "help": "With --resume_from_checkpoint: resume from a checkpoint whose optimizer, learning-rate schedule, "
            "random state or step count is missing or damaged, starting that afresh (said at the start); without "
            "it such a resume is refused, as it would not continue the run it was saved by."
        },
    )
    eval_fraction: float = field(
        default=DEFAULT_EVAL_FRACTION,
        metadata={
            "help": "Fraction of the rows held out from every stage (SFT, reward model, PPO, the tiny base), chosen "
            "by a hash of the question (common.split_held_out), so every stage holds out the same rows; saved as "
            "held_out.jsonl beside the model. 0.1: 35 questions of the bundled 345-row sample, enough to read "
            "base vs SFT vs PPO, while every other row trains (the sample is small); thousands on real data. The "
            "same value in every stage, or train_ppo.py refuses. 0 holds none out (SFT, reward model)."
        },
    )


def bf16_available() -> bool:
    """bf16 only on a GPU with bf16 units: a CPU without them runs a fallback GEMM many times slower than fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accelerator_available() -> bool:
    """Whether there is a GPU (or other accelerator) to copy batches to. The Trainer's DataLoader pins memory only
    then (dataloader_pin_memory): without one, pinning does nothing and torch warns about it at every run."""
    return torch.accelerator.is_available()


# ----------------------------------------------------------------------------------------------------------------
# Data


def load_preference_data(name: str | Path, source: ModelSource = "modelscope") -> Dataset:
    """Load question/chosen/rejected(/system) rows from a local file or folder, ModelScope, or the Hugging Face hub.

    Every row is validated; `system` is optional and comes back as "" when missing or empty.
    """
    path = Path(name)
    if path.is_dir():
        return _validate(_read_folder(path), path)
    if path.suffix in DATA_SUFFIXES:
        if not path.is_file():
            raise PipelineError(f"dataset file {path} does not exist. Check --dataset_name.")
        return _validate(_read_file(path), path)
    if source == "modelscope":
        from modelscope import dataset_snapshot_download

        folder = _download(dataset_snapshot_download, name, "dataset", "ModelScope", cache_dir=str(BASE_DIR))
        return _validate(_read_folder(Path(folder)), name)
    if source == "hf":
        from datasets import load_dataset

        dataset = _download(load_dataset, name, "dataset", "the Hugging Face hub", split="train")
        return _validate(_numbered(dataset), name)
    raise PipelineError(
        f"dataset {name!r} is not a local file or folder, and --model_source {source} cannot download it. "
        f"Pass a {'/'.join(DATA_SUFFIXES)} file, or --model_source modelscope / hf for a hub dataset id."
    )


def _download(fetch, name: str, kind: str, hub: str, **kwargs):
    try:
        return fetch(name, **kwargs)
    except Exception as error:  # the hub clients raise many types; the user needs the same advice for all
        raise PipelineError(
            f"{kind} {name!r} is not a local path and could not be downloaded from {hub} ({type(error).__name__}: "
            f"{error}). Check the name, or pass a local path; offline, run with --tiny."
        ) from error


def _numbered(rows) -> Iterator[tuple[str, dict]]:
    return ((f"row {i}", row) for i, row in enumerate(rows, start=1))


def _read_folder(folder: Path) -> Iterator[tuple[str, dict]]:
    """Rows of every data file in a folder (a downloaded dataset snapshot); only the train files if it names them."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    train_files = [p for p in files if "train" in p.relative_to(folder).as_posix()]
    if not files:
        raise PipelineError(f"dataset folder {folder} holds no {'/'.join(DATA_SUFFIXES)} file.")
    for file in train_files or files:
        for where, row in _read_file(file):
            yield f"{file}: {where}", row


def _read_file(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (position, row) pairs; the position ("line 7", "row 7") is what error messages cite.

    Each format goes through its own parser, so text comes back byte for byte: newlines (\n, \r\n) inside quoted
    CSV fields and every character JSON leaves raw in a string (U+2028, U+2029, U+0085, ...) survive.
    """
    if path.suffix == ".parquet":
        try:
            dataset = Dataset.from_parquet(str(path))
        except Exception as error:  # pyarrow's errors vary by corruption; all mean "not a readable parquet file"
            raise PipelineError(f"{path} is not a readable parquet file ({error}).") from error
        yield from _numbered(dataset)
        return
    text = _read_utf8(path)
    if path.suffix == ".csv":
        yield from _read_csv(text, path)
    elif path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise PipelineError(
                f"{path} is not valid JSON: {_json_problem(error)} at line {error.lineno}, column {error.colno}."
            ) from error
        yield from _numbered(rows)
    else:  # JSON Lines, under .jsonl or .json
        # Lines end at "\n" only: str.splitlines() would also split at U+2028, U+0085, \x0c and more, which
        # json.dumps(ensure_ascii=False) leaves raw inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip(JSON_WHITESPACE):
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise PipelineError(
                    f"{path}: line {number} is not valid JSON ({_json_problem(error)} at column {error.colno}). Each "
                    'line must be one JSON object like {"question": "...", "chosen": "...", "rejected": "..."}.'
                ) from error


def _read_utf8(path: Path) -> str:
    """The file's text, UTF-8 with or without a byte-order mark; any other encoding gets a message on converting it."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = bom + error.start
        line = data.count(b"\n", 0, offset) + 1
        raise PipelineError(
            f"{path} is not UTF-8 text: line {line} (byte {offset}) holds the byte 0x{data[offset]:02x}, which UTF-8 "
            f"does not allow there. Convert the file to UTF-8 first, e.g. from GBK: "
            f"iconv -f GBK -t UTF-8 {path} > {path.with_stem(path.stem + '.utf8')}"
        ) from error


def _read_csv(text: str, path: Path) -> Iterator[tuple[str, dict]]:
    """CSV rows as dicts under the header's names, each cited by the line it starts on.

    The csv module reads the text as a file opened with newline="" (the io.StringIO below), the one way it keeps
    quoted newlines, \r\n included, exactly (Python docs, csv.reader).
    """
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a field can be as long as the file, not 128 KiB
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        start = reader.line_num + 1
        for values in reader:
            if values:  # a blank line, as csv.DictReader skips
                if len(values) != len(header):
                    raise PipelineError(
                        f"{path}: line {start} has {len(values)} fields but the header has {len(header)} "
                        f"({', '.join(header)}). Quote fields that contain commas or newlines."
                    )
                yield f"line {start}", dict(zip(header, values))
            start = reader.line_num + 1
    except csv.Error as error:
        raise PipelineError(f"{path}: line {reader.line_num} is not valid CSV ({error}).") from error


def _json_problem(error: json.JSONDecodeError) -> str:
    """The problem without its trailing "at" ("Unterminated string starting at"), which expects the position after
    it: the callers add " at column 9" themselves."""
    return error.msg.removesuffix(" at")


def _validate(rows, source) -> Dataset:
    records = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise PipelineError(f"{source}: {where} is a {type(row).__name__}, not an object with named columns.")
        for column in REQUIRED_COLUMNS:
            problem = None
            if column not in row:
                problem = f"has no column {column!r} (it has: {', '.join(map(str, row)) or 'nothing'})"
            elif not isinstance(row[column], str):
                problem = f"column {column!r} is a {type(row[column]).__name__}, not a string ({row[column]!r})"
            elif not row[column].strip():
                problem = f"column {column!r} is empty"
            if problem:
                raise PipelineError(
                    f"{source}: {where} {problem}. Every row needs non-empty text in {', '.join(REQUIRED_COLUMNS)} "
                    "(system is optional). Fix or remove that row."
                )
        system = row.get("system") or ""
        if not isinstance(system, str):
            raise PipelineError(f"{source}: {where} column 'system' is a {type(system).__name__}, not a string.")
        record = {column: row[column] for column in REQUIRED_COLUMNS} | {"system": system}
        for column, text in record.items():
            _refuse_lone_surrogate(text, source, where, column)
        records.append(record)
    if not records:
        raise PipelineError(f"{source} holds no rows.")
    return Dataset.from_list(records)


def _refuse_lone_surrogate(text: str, source, where: str, column: str) -> None:
    """JSON's \\ud800 to \\udfff escapes are halves of a UTF-16 pair: alone, they parse into a string that is no
    text, and no tokenizer (nor the datasets library) can encode it."""
    if match := LONE_SURROGATE.search(text):
        raise PipelineError(
            f"{source}: {where} column {column!r} holds the escape \\u{ord(match.group()):04x} at character "
            f"{match.start() + 1}, half of a UTF-16 surrogate pair without its other half: no character, so no "
            "tokenizer can encode it. Write the character itself, or both halves of its pair (\\ud83d\\ude00 is 😀), "
            "or remove that row."
        )


def question_rank(question: str) -> int:
    """A stable pseudo-random rank of a question: the first 8 bytes of its SHA-256. Not Python's hash(), which is
    salted per process (PYTHONHASHSEED), so the rank is the same in every stage, process and run."""
    return int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")


def split_held_out(data: Dataset, eval_fraction: float) -> tuple[Dataset, Dataset]:
    """(training rows, held-out rows) of `data`, the same in every stage: the held-out rows are those of the
    questions of lowest `question_rank`, taken until they hold ceil(eval_fraction x rows) rows.

    The split depends on the data and `eval_fraction` only (not --seed, not another stage having run), so no stage
    trains on a row another stage holds out (issue 13: PPO's held-out questions used to include rows SFT trained on).
    Every row of a question falls on one side, so a repeated question cannot leak. A larger fraction holds out a
    superset of a smaller one's rows. Both parts keep the data's order (SFT's --sft_fraction takes the first
    training rows).
    """
    needed = math.ceil(len(data) * eval_fraction)
    questions = data["question"]
    rows_of = Counter(questions)
    held_questions, held = set(), 0
    for question in sorted(rows_of, key=lambda q: (question_rank(q), q)):
        if held >= needed:
            break
        held_questions.add(question)
        held += rows_of[question]
    if held >= len(data):
        raise PipelineError(
            f"--eval_fraction {eval_fraction} of {len(data)} rows (questions repeated in several rows stay together) "
            "leaves none to train on. Lower --eval_fraction, or use more rows."
        )
    sides = [question in held_questions for question in questions]
    return (
        data.select([i for i, side in enumerate(sides) if not side]),
        data.select([i for i, side in enumerate(sides) if side]),
    )


def check_same_held_out(held_out: Dataset, saved_as: Path, other_model: str | Path, role: str, flag: str) -> None:
    """Refuse a model trained with another held-out split than `held_out` (this run's, to be saved as `saved_as`):
    one of the two stages trained on questions the other holds out, and the held-out comparison would flatter it. A
    model without HELD_OUT_FILE (trained elsewhere, or with --eval_fraction 0) is not checked."""
    theirs = Path(other_model) / HELD_OUT_FILE
    if not theirs.is_file():
        return
    own_questions = set(held_out["question"])
    their_questions = set(load_preference_data(theirs)["question"])
    if own_questions != their_questions:
        raise PipelineError(
            f"the {role} ({flag} {other_model}) was trained with another held-out split than this run's: {theirs} "
            f"and this run's split (saved as {saved_as}) hold different questions "
            f"({len(their_questions - own_questions)} only in the first, {len(own_questions - their_questions)} only "
            "in the second), so one stage trained on questions the other holds out. Train every stage on the same "
            f"--dataset_name with the same --eval_fraction: retrain the {role}, or run this with the --eval_fraction "
            "and --dataset_name it was trained with."
        )


def save_held_out(rows: Dataset, system_prompt: str, folder: Path) -> None:
    """A stage's held-out rows beside its model, each with the system prompt it was trained with, so the stage's
    eval script sees exactly that split."""
    rows = rows.map(lambda row: {"system": row["system"] or system_prompt})
    rows.to_json(folder / HELD_OUT_FILE, force_ascii=False)


def save_train_results(folder: Path, runtime_s: float, samples_per_second: float) -> None:
    """The run's wall time and examples per second, as the Trainer's train_results.json names them."""
    results = {"train_runtime": runtime_s, "train_samples_per_second": samples_per_second}
    write_text_atomic(Path(folder) / TRAIN_RESULTS_FILE, json.dumps(results, indent=2) + "\n")


def save_trainer_stage(
    trainer, held_out: Dataset | None, system_prompt: str, metrics: dict, per_second: float | None = None
) -> None:
    """A Trainer stage's final save into its output_dir, whole or not at all (staged_save): the model or adapter and
    its tokenizer, the held-out rows (if any) and train_results.json (the run's `metrics`' train_runtime, and
    `per_second` examples a second, by default the Trainer's train_samples_per_second); then the TensorBoard writer is
    closed, so that the stage's chart sees every point."""
    with staged_save(trainer.args.output_dir) as staging:
        trainer.save_model(staging)
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(staging)
            if held_out is not None and len(held_out):
                save_held_out(held_out, system_prompt, staging)
            if per_second is None:
                per_second = metrics["train_samples_per_second"]
            save_train_results(staging, metrics["train_runtime"], per_second)
    trainer.end()


def evaluation_data(dataset_name: str | None, model_path: str | Path, source: ModelSource) -> tuple[str, Dataset]:
    """(name, rows) an eval script scores: `dataset_name` if given, else the held-out rows saved beside the model."""
    dataset = dataset_name or str(Path(model_path) / HELD_OUT_FILE)
    if dataset_name is None and not Path(dataset).is_file():
        raise PipelineError(
            f"{model_path} holds no held-out rows ({HELD_OUT_FILE}): it was trained with --eval_fraction 0 or by "
            "another tool. Pass --dataset_name with data to evaluate on."
        )
    return dataset, load_preference_data(dataset, source)


# ----------------------------------------------------------------------------------------------------------------
# Chat formatting: the one place that turns a row into messages, so every stage sees the same text.


def prompt_messages(row: dict, system_prompt: str) -> list[dict]:
    """System + user turns. A row's own non-empty `system` wins over the run's `--system_prompt`."""
    return [
        {"role": "system", "content": row.get("system") or system_prompt},
        {"role": "user", "content": row["question"]},
    ]


def sft_example(row: dict, system_prompt: str, answer_column: str = "chosen") -> dict:
    """Conversational prompt-completion: SFTTrainer then puts the loss on the completion (the answer) only."""
    return {
        "prompt": prompt_messages(row, system_prompt),
        "completion": [{"role": "assistant", "content": row[answer_column]}],
    }


def dpo_example(row: dict, system_prompt: str) -> dict:
    """Conversational prompt / chosen / rejected, the preference format DPOTrainer renders with the chat template:
    the prompt every stage builds, each answer one assistant turn."""
    return {
        "prompt": prompt_messages(row, system_prompt),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def conversation_ids(tokenizer, row: dict, system_prompt: str, answer: str) -> list[int]:
    """Token ids of system + user + assistant `answer`, ending at the answer's end-of-turn token (eos, `<|im_end|>`).

    This is the sequence a reward model scores, and its last token is where every stage reads the score (see
    `reward_scores`). The chat template's text after eos (Qwen's "\n") is cut, so RM training pairs end exactly where
    a policy's sampled answer stops.
    """
    messages = prompt_messages(row, system_prompt) + [{"role": "assistant", "content": answer}]
    ids = tokenizer.apply_chat_template(messages)["input_ids"]
    if tokenizer.eos_token_id not in ids:
        raise PipelineError(
            f"the chat template does not end an assistant turn with the eos token {tokenizer.eos_token!r}, so there "
            "is no token to read the reward at. Set --eos_token to the template's end-of-turn token (<|im_end|> for "
            "Qwen)."
        )
    return ids[: len(ids) - ids[::-1].index(tokenizer.eos_token_id)]


def rm_example(row: dict, tokenizer, system_prompt: str) -> dict:
    """The chosen and rejected conversations as token ids, the pre-tokenized pair format RewardTrainer trains on."""
    return {
        "chosen_ids": conversation_ids(tokenizer, row, system_prompt, row["chosen"]),
        "rejected_ids": conversation_ids(tokenizer, row, system_prompt, row["rejected"]),
    }


def check_same_tokenizer(tokenizer, other, where: str, policy_path: str) -> None:
    """Refuse a model whose tokenizer is not the policy's: the RL stages feed the policy's token ids straight to the
    reward model (and PPO's critic), and the comparison measures every method's answers in the SFT model's tokens."""
    special_tokens = (tokenizer.eos_token, tokenizer.pad_token)
    if other.get_vocab() != tokenizer.get_vocab() or (other.eos_token, other.pad_token) != special_tokens:
        raise PipelineError(
            f"the tokenizer of {where} differs from the policy's ({policy_path}): vocabulary or eos/pad tokens. The "
            "policy's token ids go straight to the reward model and the critic, so every model must share one "
            "tokenizer: train them from the same base model."
        )


def check_pad_token(tokenizer, where: str, model=None) -> None:
    """A reward model reads its score at the last token that is not padding, and that token must be eos: with
    pad == eos the answer's own `<|im_end|>` would count as padding and the score would move to the token before it.
    A model given must find padding by the tokenizer's pad id."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise PipelineError(
            f"the tokenizer of {where} has pad token {tokenizer.pad_token!r} and eos token {tokenizer.eos_token!r}. "
            "The reward is read at the last non-pad token, the answer's eos, so pad must be a token of the vocabulary "
            "other than eos: train the reward model with --pad_token set to one (Qwen's <|endoftext|>)."
        )
    if model is not None and model.config.pad_token_id != tokenizer.pad_token_id:
        raise PipelineError(
            f"{where}: the model's config.pad_token_id is {model.config.pad_token_id} but its tokenizer pads with "
            f"{tokenizer.pad_token!r} (id {tokenizer.pad_token_id}), so the reward would be read at the wrong token. "
            "Set pad_token_id in its config.json to the tokenizer's pad id."
        )


def check_target_modules(model: torch.nn.Module, targets: str | list[str] | None, where: str) -> None:
    """Refuse a --lora_target_modules name that matches none of `model`'s modules, by PEFT's rule: a list's names match
    a module by its last parts (q_proj: model.layers.0.self_attn.q_proj), one name alone is a regular expression of the
    whole path (TRL's ModelConfig passes it as such), all-linear every linear layer. PEFT fails only when no name
    matches anything and skips the rest in silence, which would train other layers than the flag says."""
    if targets is None or targets == "all-linear":  # unset: PEFT's layers for the architecture
        return
    paths = [name for name, _ in model.named_modules()]
    if isinstance(targets, str):
        try:
            missing = [] if any(re.fullmatch(targets, path) for path in paths) else [targets]
        except re.error as error:
            raise PipelineError(f"--lora_target_modules {targets!r} is not a regular expression ({error}).") from error
    else:
        missing = [name for name in targets if not any(path == name or path.endswith(f".{name}") for path in paths)]
    if missing:
        linear = dict.fromkeys(
            p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        )
        raise PipelineError(
            f"--lora_target_modules: {where} has no module {_join(missing)}, so that adapter would not be where the "
            f"flag says. Its linear layers are {_join(list(linear))}: name some of them (the default is "
            f"{' '.join(LORA_TARGET_MODULES)})."
        )


@torch.no_grad()
def reward_scores(
    model, tokenizer, sequences: list[list[int]], batch_size: int | None = None, progress: str | None = None
) -> torch.Tensor:
    """Reward-model scores of token sequences (each ending at its answer's eos, see `conversation_ids`), in batches of
    `batch_size` (unset: one batch), with a progress bar titled `progress` if given.

    Right padding, as RewardTrainer's collator: positions and causal attention of the real tokens are then the same
    as unpadded, so a sequence scores the same alone or next to longer ones. The sequence-classification head reads
    the last token that is not `config.pad_token_id`, i.e. the answer's eos, in training, evaluation and PPO alike.
    """
    batch_size = batch_size or len(sequences)
    scores = []
    for i in tqdm(range(0, len(sequences), batch_size), progress, disable=progress is None):
        input_ids, attention_mask = padded(sequences[i : i + batch_size], tokenizer.pad_token_id, "right")
        logits = model(input_ids.to(model.device), attention_mask=attention_mask.to(model.device)).logits
        scores.append(logits[:, 0].float())
    return torch.cat(scores)


@functools.cache
def lexicon() -> dict[str, tuple[str, ...]]:
    """The lexicon judge's word lists, {"rude": (...), "polite": (...)}, read once from LEXICON_FILES: one word or
    phrase a line, blank lines and lines starting with `#` skipped, the rest taken as written (no case folding)."""
    lists = {}
    for name, path in LEXICON_FILES.items():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise PipelineError(
                f"the lexicon judge's {name} word list {path} cannot be read ({reason}). Restore it from the "
                "repository (git checkout -- data/lexicon), or write one word or phrase a line, in UTF-8."
            ) from None
        lists[name] = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if not lists[name]:
            raise PipelineError(
                f"the lexicon judge's {name} word list {path} has no entry (every line is blank or a # comment). "
                "Put one word or phrase a line, or restore it: git checkout -- data/lexicon"
            )
    return lists


def judge_hits(answer: str) -> dict[str, list[str]]:
    """The entries of each word list found in `answer`, each as many times as it occurs: what judge_score counts, for
    a reader to check a verdict by eye."""
    return {name: [word for word in words for _ in range(answer.count(word))] for name, words in lexicon().items()}


def judge_score(answer: str) -> int:
    """The lexicon judge, a second judge of rudeness that PPO is never optimised against: rude hits minus polite
    hits, where a list's hits are, summed over its entries, how many times the entry occurs in the answer.

    Each entry is counted on its own with `str.count`: its non-overlapping occurrences, left to right. So text that
    two entries share counts once for each (不会自己查 holds both 不会自己 and 自己查: two rude hits), also when one is
    rude and the other polite. The bundled lists keep no entry inside another, within a list or across the two, so a
    word is never counted twice by accident. Positive: judged rude; negative: judged polite; 0: neutral.
    """
    hits = judge_hits(answer)
    return len(hits["rude"]) - len(hits["polite"])


def judge_verdict(score: int) -> str:
    """The judge's verdict on one answer, from its score."""
    return "rude" if score > 0 else "polite" if score < 0 else "neutral"


def judge_summary(answer: str) -> str:
    """One line: the judge's score and verdict on `answer`, and the words it counted, so a reader can check it."""
    hits, score = judge_hits(answer), judge_score(answer)
    words = "; ".join(f"{name}: {' '.join(found)}" for name, found in hits.items() if found)
    return f"judge: {score:+d} {judge_verdict(score)}" + (f" ({words})" if words else "")


def judge_scores(answers: list[str]) -> torch.Tensor:
    """judge_score of each answer, as a float tensor to sit beside the reward model's scores."""
    return torch.tensor([judge_score(answer) for answer in answers], dtype=torch.float)


def prompt_ids(tokenizer, row: dict, system_prompt: str) -> list[int]:
    """Token ids of system + user + the assistant generation prompt: what a policy answers from."""
    return tokenizer.apply_chat_template(prompt_messages(row, system_prompt), add_generation_prompt=True)["input_ids"]


# ----------------------------------------------------------------------------------------------------------------
# Sampled answers: generated, cut and scored the same way in PPO's rollouts and in eval_ppo.py.


def sampling_config(tokenizer, max_new_tokens: int, temperature: float) -> GenerationConfig:
    """Sample from softmax(logits / temperature) and nothing else; stop at the end-of-turn token (eos).

    PPO computes log-probs under exactly this distribution, so every sampling warper a checkpoint's
    generation_config.json may turn on is set off here: generate() fills each field left unset from that file, and
    Qwen2.5-Instruct's sets top_k 20, top_p 0.8 and repetition_penalty 1.05. Inherited, they make the sampled
    distribution differ from the policy's, and the KL to the reference is no longer 0 before the first step (README,
    Stage 3: why not TRL's PPOTrainer).
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def padded(sequences: list[list[int]], pad_token_id: int, side: Literal["left", "right"]):
    """(ids, attention mask) of token sequences padded to one length. Prompts are padded on the left, so that every
    answer generated from them starts at the same column; scored sequences on the right (see `reward_scores`)."""
    rows = [torch.tensor(ids) for ids in sequences]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_token_id, padding_side=side)
    mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True, padding_side=side)
    return ids, mask


def answer_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """True at each answer's tokens, False at the padding after them (answers of `lengths`, padded to `width`)."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def cut_after_stop(
    responses: torch.Tensor, stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad everything after each answer's first stop token; return (answers, lengths including the stop token).

    Answers that never stopped keep their full width. Lengths, not the pad id, say where an answer ends: the model
    may sample the pad token itself mid-answer.
    """
    is_stop = responses == stop_token_id
    lengths = torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, responses.shape[1])
    return responses.masked_fill(~answer_mask(lengths, responses.shape[1]), pad_token_id), lengths


# ----------------------------------------------------------------------------------------------------------------
# Models


def resolve_model(name_or_path: str | Path, source: ModelSource, rebuild_stale: bool = True) -> str:
    """A local folder is used as is; otherwise download it (ModelScope or the HF hub) or build the tiny model there.

    The tiny base is built where it is missing, and built again where another recipe built it (stale_tiny_base), for
    the stages that train from it. The others (`rebuild_stale=False`: PPO's critic and --from_base policy, the
    comparison, the page) read it beside models trained from it: a new one would discard the base those models came
    from, then be refused by them (another tokenizer), so they use it as it is.
    """
    path = Path(name_or_path)
    if path.is_dir() and not (source == "tiny" and stale_tiny_base(path)):
        return str(path)
    if source == "tiny":
        if path.is_dir() and not rebuild_stale:
            print(
                f"note: {path} was built by another recipe of the tiny preset (an earlier version of this project, or "
                "other sample data); using it as it is: the models trained from it need it so (a new one would have "
                "another tokenizer). train_sft.py --tiny and train_rm.py --tiny build it again, and the stages after "
                "them then need training again."
            )
            return str(path)
        load_preference_data(SAMPLE_DATA)  # what the build reads: a bad sample fails in a second, before any build
        state = PartialState()
        with state.main_process_first():  # one process builds it, the others then find it
            if state.is_main_process:
                with waiting_lock(path, f"Waiting for another process building the tiny base at {path} ..."):
                    if not path.is_dir() or stale_tiny_base(path):  # that process built today's: reuse it
                        (build_tiny_base if state.num_processes == 1 else _build_tiny_base_alone)(path)
        return str(path)
    if source == "modelscope":
        from modelscope import snapshot_download

        return _download(snapshot_download, str(name_or_path), "model", "ModelScope", cache_dir=str(BASE_DIR))
    if source == "hf":
        from huggingface_hub import snapshot_download

        return _download(
            snapshot_download, str(name_or_path), "model", "the Hugging Face hub", cache_dir=str(BASE_DIR)
        )
    raise PipelineError(f"unknown --model_source {source!r}; choose one of {', '.join(get_args(ModelSource))}.")


def tiny_recipe(seed: int = TINY_SEED) -> dict:
    """What the tiny base is built from, saved beside it as TINY_RECIPE_FILE: a folder built from anything else (an
    earlier version of this project, other sample data) is not the base today's code and README describe."""
    return dict(
        seed=seed,
        tokenizer="byte-level BPE over the training rows, one token per Chinese character",
        vocab_size=TINY_VOCAB_SIZE,
        model=TINY_MODEL_CONFIG,
        training=TINY_BASE_TRAINING,
        data_sha256=hashlib.sha256(SAMPLE_DATA.read_bytes()).hexdigest(),
    )


def stale_tiny_base(path: Path) -> bool:
    """Whether `path` is the tiny preset's own folder (TINY_BASE_DIR) built by another recipe than today's. Only that
    folder, which build_tiny_base alone writes, is ever rebuilt: any other is the user's."""
    if not path.is_dir() or path.resolve() != TINY_BASE_DIR.resolve():
        return False
    recipe, _ = _json_file(path / TINY_RECIPE_FILE)  # None if missing or damaged: not known to be today's base
    return recipe != tiny_recipe()


def require_one_process(script: str) -> None:
    """The eval scripts run in one process: under `accelerate launch` every process would repeat the same work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PipelineError(
            f"{script} runs in one process; start it with python {script}, not accelerate launch or torchrun."
        )


def python_command() -> str:
    """`python`, or the interpreter running this script where it lives under the working folder (make's .venv), so
    that a printed command works as printed without activating the environment."""
    interpreter = Path(sys.executable).absolute()
    return str(interpreter.relative_to(Path.cwd())) if interpreter.is_relative_to(Path.cwd()) else "python"


def command(script: str, tiny: bool, **flags) -> str:
    """The command line a user runs to make or use a checkpoint: `python script [--tiny] [--flag value ...]`, quoted
    for a shell. Hints carry the user's own flags, so they work as printed; a flag set to True is written alone, one
    set to None is left out."""
    words = [python_command(), script] + (["--tiny"] if tiny else [])
    for flag, value in flags.items():
        if value is True:
            words.append(f"--{flag}")
        elif value is not None:
            words += [f"--{flag}", str(value)]
    return shlex.join(words)


def base_model_remedy(path: str | Path, flag: str) -> str:
    """What makes a base model folder whole again: a download or tiny build is redone by deleting it and running the
    same command again; a folder of the user's own is theirs to replace."""
    if BASE_DIR.resolve() in Path(path).resolve().parents:
        return f"rm -r {shlex.quote(str(path))} && {shlex.join([python_command(), *sys.argv])}"
    return f"pass a complete model folder as --{flag}"


def unless_default(path: str | Path, default: str | Path) -> str | None:
    """`path`, or None where it is the default folder, so that hints stay as short as the README's."""
    return None if Path(path) == Path(default) else str(path)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: what a folder holds, saves that a kill cannot break, and the output folder of a run


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete, readable checkpoint, or None: a marker beside weights (and a tokenizer for a
    model), every safetensors file as long as its header says."""
    markers = [marker for marker in CHECKPOINT_MARKERS if (path / marker).is_file()]
    if not markers:
        return "no model"
    missing = [what for what, patterns in CHECKPOINT_FILES.items() if not any(any(path.glob(p)) for p in patterns)]
    if missing:
        return f"a {markers[0]} but no {' and no '.join(missing)} file"
    for file in path.glob("*.safetensors"):
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as error:
            return f"a damaged {file.name} ({error})"
    return None


def read_checkpoint_json(path: str | Path, remedy: str, keys: tuple[str, ...] = ()) -> dict:
    """The mapping a checkpoint's JSON file holds, with each of `keys`; else a PipelineError that names the file and
    what is wrong with it, and ends with `remedy` (what to do: "Write it again: <the command that writes it>")."""
    value, problem = _json_file(Path(path), keys)
    if problem is not None:
        raise PipelineError(
            f"the checkpoint file {path} {problem}: it was not written completely, or was damaged since. {remedy}"
        )
    return value


def _json_file(path: Path, keys: tuple[str, ...] = ()) -> tuple[dict | None, str | None]:
    """(the mapping the JSON file `path` holds, None), or (None, what is wrong with it: "is empty", ...)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, "is missing"
    except OSError as error:
        return None, f"cannot be read ({error.strerror})"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except json.JSONDecodeError as error:
        if not error.doc.strip():
            return None, "is empty"
        return None, f"is not valid JSON ({_json_problem(error)} at line {error.lineno}, column {error.colno})"
    if not isinstance(value, dict):
        return None, f"holds a JSON {type(value).__name__}, not a mapping of names to values"
    lacking = [repr(key) for key in keys if key not in value]
    return (None, f"has no {_join(lacking)}") if lacking else (value, None)


# Errors while loading a checkpoint that are not the checkpoint's: the machine ran out of memory.
NOT_THE_CHECKPOINT = (MemoryError, torch.OutOfMemoryError)


@contextmanager
def loading(path: str | Path, command: str) -> Iterator[None]:
    """Turn a library's error while loading the checkpoint at `path` into a PipelineError with the `command` that
    writes it again.

    Every file is there and parses (require_checkpoint checked that), so what fails now are files that do not make a
    model or tokenizer: a config value of the wrong type (ValueError, TypeError, huggingface_hub's strict dataclass
    errors), a config whose sizes are not the weights' (RuntimeError), a tokenizer.json without its vocabulary
    (KeyError, or the tokenizers library's bare Exception), weights cut short where no header says so (OSError,
    SafetensorError). Hence any Exception but running out of memory; the message keeps the library's own words."""
    try:
        yield
    except NOT_THE_CHECKPOINT:
        raise
    except Exception as error:
        raise PipelineError(
            f"the checkpoint at {path} could not be loaded ({type(error).__name__}: {' '.join(str(error).split())}). "
            f"It may be damaged or half-copied. Write it again: {command}"
        ) from error


def load_tokenizer(path: str | Path, command: str, **kwargs):
    """The tokenizer of the checkpoint at `path` (AutoTokenizer), its errors said with the `command` that writes it."""
    with loading(path, command):
        return AutoTokenizer.from_pretrained(path, **kwargs)


def weight_names(path: Path) -> set[str]:
    """The tensor names of a checkpoint's safetensors files, read from their headers (no weights are loaded)."""
    names = set()
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            names |= set(handle.keys())
    return names


def settle_checkpoint(path: Path) -> None:
    """Finish a save that was killed before it swapped its complete new checkpoint (<path>.ready) into place, and
    clear what a finished swap left (<path>.old). Each step repeats safely, so a kill here is settled next time."""
    ready, old = sibling(path, READY), sibling(path, OLD)
    if ready.is_dir():
        # Periodic checkpoints (training states to resume from) belong to the run, not to one saved model.
        if path.is_dir():
            for entry in path.iterdir():
                if PERIODIC_CHECKPOINT.fullmatch(entry.name) and not (ready / entry.name).exists():
                    os.rename(entry, ready / entry.name)
            if old.exists():
                shutil.rmtree(old)
            os.rename(path, old)
        os.rename(ready, path)
    elif not path.exists() and old.is_dir():
        os.rename(old, path)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged_save(path: str | Path) -> Iterator[Path]:
    """Save a checkpoint into <path>.partial, then swap it in (see `settle_checkpoint`).

    The folder is whole or absent at every instant: <path>.partial is never read; once written it becomes
    <path>.ready in one rename, which is complete by construction; the swap renames folders only. So a kill at any
    point leaves the previous checkpoint or the new one complete, and the next load or save settles which.
    Under several processes every one enters the block (DeepSpeed and FSDP gather weights there, and each process
    saves its own random state); the main process clears the staging folder before and swaps it in after.
    """
    path = Path(path)
    staging = sibling(path, PARTIAL)
    state = PartialState()
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        settle_checkpoint(path)
        if staging.exists():
            shutil.rmtree(staging)  # a save killed while writing: never complete
    state.wait_for_everyone()
    try:
        yield staging
    except (OSError, SafetensorError) as error:  # a full disk, most often: the staging folder is never read
        if state.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise PipelineError(save_failure(path, staging, error)) from error
    state.wait_for_everyone()
    if state.is_main_process:
        os.rename(staging, sibling(path, READY))
        settle_checkpoint(path)


def save_failure(path: Path, staging: Path, error: Exception) -> str:
    """What a save into `path` that failed while writing `staging` (removed) left, and what to do."""
    reason = f"{error.strerror}: {error.filename or staging}" if isinstance(error, OSError) else str(error)
    kept = (
        f"the previous checkpoint in {path} is intact"
        if checkpoint_problem(path) is None
        else f"nothing was saved to {path}"
    )
    periodic = periodic_steps(path.parent if PERIODIC_CHECKPOINT.fullmatch(path.name) else path)
    resume = f", or resume from {periodic[-1]} (--resume_from_checkpoint)" if periodic else ""
    return (
        f"saving to {path} failed ({reason}): {kept}, and the incomplete save {staging} was removed. Free some space "
        f"on that disk (the save needs about the model's size) or pass an --output_dir on another disk, then run "
        f"again{resume}."
    )


def periodic_steps(folder: Path) -> list[Path]:
    """The checkpoint-<step> folders in `folder`, lowest step first."""
    found = [entry for entry in folder.glob("checkpoint-*") if PERIODIC_CHECKPOINT.fullmatch(entry.name)]
    return sorted((entry for entry in found if entry.is_dir()), key=checkpoint_step)


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint-<step> folder."""
    return int(folder.name.split("-")[1])


def require_checkpoint(path: str | Path, command: str, role: str | None = None) -> Path:
    """`path` if it holds a complete checkpoint fit for `role` (see ROLES; None: any model or adapter), after settling
    a save that was cut short; else a PipelineError that names the folder, the problem and the `command` that writes
    the right thing."""
    path = Path(path)
    if sibling(path, READY).exists() or sibling(path, OLD).exists():
        lock = try_lock(path)
        if lock is not None:  # no run is saving here now
            settle_checkpoint(path)
            lock.close()
    problem = checkpoint_problem(path)
    if problem == "no model":
        partial = sibling(path, PARTIAL)
        interrupted = f" ({partial} is left from a save that was killed while writing, and is incomplete)"
        raise PipelineError(f"no model at {path}{interrupted if partial.exists() else ''}. Make it first: {command}")
    if problem:
        raise PipelineError(
            f"the checkpoint at {path} has {problem}: it was not written completely, or was damaged since. Write it "
            f"again: {command}"
        )
    for name, keys in CHECKPOINT_JSON.items():
        if (path / name).is_file():
            read_checkpoint_json(path / name, f"Write it again: {command}", keys)
    if role is not None:
        check_role(path, role, command)
    return path


def check_role(path: Path, role: str, command: str) -> None:
    """A model folder must be what its role needs: a language model for a policy, a reward model with a trained
    score head for scoring (a language model loaded as one would score with a random head, silently), a LoRA adapter
    for PPO's output."""
    is_adapter = (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()
    if is_adapter != (role == "adapter"):
        what = "a LoRA adapter (train_ppo.py's output), not a whole model" if is_adapter else "a whole model"
        raise PipelineError(
            f"{path} is {what}, so it cannot be the {role}. Pass a {role} folder, such as the one this writes: "
            f"{command}"
        )
    if is_adapter:
        return
    architectures = read_checkpoint_json(path / "config.json", f"Write it again: {command}").get("architectures") or []
    if not any(name.endswith(suffix) for name in architectures for suffix in ROLES[role]):
        kind = " / ".join(architectures) or "no architecture"
        raise PipelineError(
            f"{path} is a {kind} model, not a {role} (*{' or *'.join(ROLES[role])}). Pass a {role} folder, such as "
            f"the one this writes: {command}"
        )
    if role == "reward model" and SCORE_HEAD not in weight_names(path):
        raise PipelineError(
            f"{path} has no trained score head ({SCORE_HEAD} is not in its weights): loaded as a reward model it "
            f"would score with random weights. Train one: {command}"
        )


def load_model(model_class, path: str | Path, command: str, role: str | None = None):
    """A stage's checkpoint for inference: (model in eval mode, on the GPU if there is one; its tokenizer)."""
    path = require_checkpoint(path, command, role)
    # Not dtype="auto": that loads Qwen's bf16 weights as bf16, many times slower on a CPU without bf16 units.
    dtype = torch.bfloat16 if bf16_available() else torch.float32
    with loading(path, command):  # a file damaged in a way the checks of require_checkpoint cannot see
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = model_class.from_pretrained(path, dtype=dtype)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def find_policies(paths: dict[str, str | Path], tiny: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Of `paths` ({method of POLICIES: its folder}): ({method: folder} of those holding a model, in POLICIES' order;
    {method: the command that makes it} of the others). A damaged checkpoint counts as found, so that loading it
    says what is wrong."""
    found, missing = {}, {}
    for name in POLICIES:
        path = Path(paths[name])
        if checkpoint_problem(path) != "no model" or sibling(path, READY).exists() or sibling(path, OLD).exists():
            found[name] = str(path)
        else:
            missing[name] = policy_command(name, path, tiny)
    return found, missing


def policy_command(name: str, path: str | Path, tiny: bool) -> str:
    """The command that writes the policy `name` (of POLICIES) into `path` (see `hint_output_dir`)."""
    default, script, flags = POLICIES[name]
    return command(script, tiny, **flags, output_dir=hint_output_dir(path, default, WRITES[script]))


def reward_model_command(path: str | Path, tiny: bool) -> str:
    """The command that writes the reward model into `path` (see `hint_output_dir`)."""
    return command("train_rm.py", tiny, output_dir=hint_output_dir(path, RM_DIR, WRITES["train_rm.py"]))


def model_kind(path: str | Path) -> str | None:
    """What the folder `path` holds, by its files alone: "adapter", "reward model" or "language model" (see ROLES),
    "a model" of another architecture or an unreadable config, or None where it holds no model."""
    path = Path(path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return "adapter"
    if not (path / "config.json").is_file():
        return None
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):  # unreadable, or JSON but not an object
        return "a model"
    for role in ("reward model", "language model"):
        if any(name.endswith(ROLES[role]) for name in architectures):
            return role
    return "a model"


def hint_output_dir(path: str | Path, default: str | Path, kind: str) -> str | None:
    """The --output_dir a hint names for a command that writes a model of `kind` (WRITES) meant for `path`: `path`
    (None where it is the default), unless it holds a model of another kind, which the command run as printed would
    replace; then the default folder, or the first free <default>_<n>. A hint shown because `path` holds the wrong
    model must never suggest overwriting it."""
    for candidate in itertools.chain((path, default), (f"{default}_{n}" for n in itertools.count(2))):
        if model_kind(candidate) in (None, kind):
            return unless_default(candidate, default)


def load_policy(path: str | Path, maker: str, tiny: bool):
    """A trained policy for inference, (model, tokenizer): a whole causal LM, or a LoRA adapter on the model its
    adapter_config.json names, left unmerged so that disable_adapter() gives that model back (the reference).
    `maker` is the command that writes `path`; `tiny` goes into the hint for a missing model under the adapter."""
    path = require_checkpoint(path, maker)
    if not (path / "adapter_config.json").is_file():
        return load_model(AutoModelForCausalLM, path, maker, "language model")
    trained_on = adapter_base(path, maker)
    makers = {folder.resolve(): name for name, (folder, _, _) in POLICIES.items()}
    name = makers.get(Path(trained_on).resolve())
    remedy = (
        policy_command(name, POLICIES[name][0], tiny) if name else base_model_remedy(trained_on, "base_model_path")
    )
    model, tokenizer = load_model(AutoModelForCausalLM, trained_on, remedy, "language model")
    with loading(path, maker):
        return PeftModel.from_pretrained(model, path).eval(), tokenizer


def adapter_base(path: str | Path, maker: str) -> str:
    """The model the LoRA adapter at `path` was trained on (its adapter_config.json's base_model_name_or_path)."""
    key = "base_model_name_or_path"
    return read_checkpoint_json(Path(path) / "adapter_config.json", f"Write it again: {maker}", (key,))[key]


def try_lock(path: Path):
    """An exclusive lock on the output folder `path` (a file beside it, since the folder itself is swapped), or None
    if another process holds it. The operating system releases it when the process ends, however it ends."""
    lock_file = sibling(path.parent / f".{path.name}", LOCK)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_file.open("a+")
    except OSError:
        return None  # a folder we cannot write to: nothing to settle or lock here
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def waiting_lock(path: Path, waiting: str) -> Iterator[None]:
    """Hold `path`'s lock (try_lock's) for the block; while another process holds it, say `waiting` and wait. Where
    no lock file can be written, the block runs unlocked and its own write says why it fails."""
    lock = try_lock(path)
    if lock is None:
        try:
            lock = sibling(path.parent / f".{path.name}", LOCK).open("a+")
        except OSError:
            lock = None
        else:
            print(waiting, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


def check_output_dir(
    output_dir: str | Path, inputs: dict[str, str | Path], needed_bytes: int = 0, kind: str | None = None
) -> None:
    """Before anything loads, and without writing anything: refuse an output folder that is, holds or sits inside one
    of the run's `inputs` ({flag: path}), the bundled data or the TensorBoard runs, that sits inside a checkpoint, that
    is a file or a link (the save swaps folders by renaming), that holds files other than a checkpoint (a save
    replaces the whole folder) or a model of another kind than the run's `kind` (WRITES); check that it can be
    written and has room for `needed_bytes`."""
    path = Path(output_dir)
    refuse_protected(path, "--output_dir", inputs, "saving", OUTPUT_DIR_AREAS)
    refuse_unswappable(path)
    checkpoint = checkpoint_around(path.resolve())
    if checkpoint is not None:
        raise ArgumentError(
            f"--output_dir {output_dir} is inside the checkpoint {checkpoint}: the next save of that folder would "
            "delete it. Pass an --output_dir outside every checkpoint."
        )
    if path.is_dir() and checkpoint_problem(path) == "no model":
        strangers = sorted(
            e.name for e in path.iterdir() if not (PERIODIC_CHECKPOINT.fullmatch(e.name) or e.name.endswith(LOCK))
        )
        if TRAINER_MODEL_CARD in strangers and any(PERIODIC_CHECKPOINT.fullmatch(e.name) for e in path.iterdir()):
            strangers.remove(TRAINER_MODEL_CARD)  # from a run stopped before its final save: resuming it is fine
        if strangers:
            raise ArgumentError(
                f"--output_dir {output_dir} holds files that are not a checkpoint ({', '.join(strangers[:5])}"
                f"{', ...' if len(strangers) > 5 else ''}), and a save replaces the whole folder. Pass a new or empty "
                "folder, or a checkpoint folder to overwrite."
            )
    held = model_kind(path) if kind is not None and path.is_dir() else None
    if held in WRITES.values() and held != kind:  # the same kind is a run replacing its own earlier model
        raise ArgumentError(
            f"--output_dir {output_dir} holds {held_article(held)}, and this script writes {held_article(kind)}: "
            f"saving would replace that {held} with it. Pass another --output_dir, or move {output_dir} away first."
        )
    existing = check_writable(
        path.resolve(),
        f"cannot write beside --output_dir {output_dir}",
        "so the model could not be saved after training. Pass an --output_dir on a writable disk.",
    )
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise PipelineError(
            f"--output_dir {output_dir} is on a disk with {free / 2**30:.1f} GiB free, and saving this run needs "
            f"about {needed_bytes / 2**30:.1f} GiB. Free some space or pass an --output_dir on another disk."
        )


def held_article(kind: str) -> str:
    """A kind of WRITES with its article: "an adapter", "a reward model"."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def check_output_file(path: str | Path, flag: str, inputs: dict[str, str | Path | None], what: str) -> Path:
    """The one guard of every file a script writes (metrics, charts, exports), before the work and without writing
    anything: refuse a path that is or sits inside one of the run's `inputs` ({flag: path}, None for unset) or the
    bundled data, a file among a checkpoint's own (only REPORT_FILES may sit beside a model), or a folder; check that
    its folder can be written, so that `what` is not lost after the work. Write it with `atomic_file`."""
    path = Path(path)
    if is_stream(path):  # written into where it is (see atomic_file): no folder of files to check
        return path
    if path.is_dir():
        raise ArgumentError(f"{flag} {path} is a folder; it names the file to write. Pass a file path.")
    refuse_protected(path, flag, {name: value for name, value in inputs.items() if value is not None}, "writing")
    where = path.resolve()
    checkpoint = checkpoint_around(where)
    if checkpoint is not None and not (where.parent == checkpoint and where.name in REPORT_FILES):
        raise ArgumentError(
            f"{flag} {path} is inside the checkpoint {checkpoint}, among its model's files: writing it could replace "
            f"one of them, and the next save of that folder deletes it. Pass a path outside every checkpoint (only "
            f"{' and '.join(REPORT_FILES)} may sit beside a model)."
        )
    existing = check_writable(
        where.parent,
        f"cannot write {flag} {path}",
        f"so {what} would be lost after the work. Pass a {flag} on a writable disk.",
    )
    free = shutil.disk_usage(existing).free
    if free < REPORT_BYTES:  # an empty file can still be created on a full disk: check_writable passes there
        raise PipelineError(
            f"cannot write {flag} {path}: its disk has {free // 1024} KiB free, less than the {REPORT_BYTES // 1024} "
            f"KiB a report may take, so {what} would be lost after the work. Free some space or pass a {flag} on "
            "another disk."
        )
    return path


def checkpoint_around(where: Path) -> Path | None:
    """The checkpoint folder (see is_checkpoint) that the resolved path `where` sits inside, if any."""
    return next((folder for folder in where.parents if is_checkpoint(folder)), None)


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a model or adapter: its marker beside weights or a tokenizer (complete or not)."""
    return any((folder / marker).is_file() for marker in CHECKPOINT_MARKERS) and any(
        any(folder.glob(pattern)) for patterns in CHECKPOINT_FILES.values() for pattern in patterns
    )


def refuse_protected(
    path: Path, flag: str, inputs: dict[str, str | Path], verb: str, areas: dict[str, tuple] | None = None
) -> None:
    """An ArgumentError where `path` is, holds or sits inside one of the run's `inputs` ({flag: path}) or the
    places no script writes into (PROTECTED_AREAS, and `areas` of the same shape): what `verb` (saving, writing)
    there would destroy."""
    try:
        where = path.resolve()
    except (RuntimeError, OSError) as error:  # a link that leads back to itself (RuntimeError before Python 3.13)
        raise ArgumentError(
            f"{flag} {path} cannot be followed to a place ({error}): a link in it leads back to itself. Pass another "
            f"{flag}."
        ) from error
    for name, value in inputs.items():
        relation = path_relation(where, Path(value).resolve())
        if relation:
            raise ArgumentError(
                f"{flag} {path} {relation} --{name} {value}, which this run reads: {verb} would overwrite it. Pass "
                f"another {flag}."
            )
    for area, (folder, harm) in (PROTECTED_AREAS | (areas or {})).items():
        relation = path_relation(where, Path(folder).resolve())
        if relation:
            raise ArgumentError(f"{flag} {path} {relation} {area} {folder}: {verb} {harm}. Pass another {flag}.")


def path_relation(where: Path, other: Path) -> str | None:
    """How the resolved path `where` stands to `other`: "is", "holds", "is inside", or None where apart."""
    if where == other:
        return "is"
    if where in other.parents:
        return "holds"
    if other in where.parents:
        return "is inside"
    return None


def refuse_unswappable(path: Path) -> None:
    """An output folder must be a folder, or nothing yet, and so must its save's staging names: the save renames
    <path>.partial to <path>.ready and swaps it with <path> (see staged_save), which a file there breaks after the
    training, and which would replace a link, not the folder it points to."""
    for name in (path, sibling(path, PARTIAL), sibling(path, READY), sibling(path, OLD)):
        if name.is_symlink() or (name.exists() and not name.is_dir()):
            what = f"a link to {os.readlink(name)}" if name.is_symlink() else "a file"
            subject = "--output_dir" if name == path else f"--output_dir {path}'s staging name"
            raise ArgumentError(
                f"{subject} {name} is {what}, not a folder: the save swaps folders by renaming them, so it would "
                f"{'replace the link, not the folder it points to' if name.is_symlink() else 'fail after training'}. "
                f"Pass a folder{' (the link target itself)' if name.is_symlink() else ''} as --output_dir, or move "
                f"{name} away."
            )


def check_writable(where: Path, cannot: str, consequence: str) -> Path:
    """The folder nearest `where` that exists (`where` itself or a parent: what a write will go into), after checking
    that a file can be created there; else a PipelineError, `cannot` (what), the reason, then `consequence`."""
    existing = next(folder for folder in (where, *where.parents) if folder.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise PipelineError(f"{cannot} ({error.strerror}: {error.filename or existing}), {consequence}") from error
    return existing


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write, then renamed over `path` (os.replace, one atomic
    step): a reader or a kill sees the previous file or the new one whole, never half of it. A write that fails (a
    full disk) leaves the previous file as it was and raises a PipelineError. A link is followed to the file it
    names (as the guard checked it, and as a plain write would), not replaced; a device or a pipe there (/dev/null,
    /dev/stdout) is written into, never replaced by a file: the rename would destroy it (as root, /dev/null itself)."""
    path = Path(path)
    in_place = is_stream(path)
    if path.is_symlink() and not in_place:
        path = path.resolve()
    # The file's own suffix last, so that writers that infer the format from the name (savefig) still do.
    temporary = (
        path if in_place else path.with_name(f".{path.name}.{os.getpid()}-{time.time_ns()}{TEMPORARY}{path.suffix}")
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        if not in_place:
            os.replace(temporary, path)
    except OSError as error:
        kept = "the file there is unchanged" if path.exists() else "nothing was written"
        raise PipelineError(
            f"could not write {path} ({error.strerror}: {error.filename or path}): {kept}. Free some space on its "
            "disk or pass a writable path, then run again."
        ) from error
    finally:
        if not in_place:
            temporary.unlink(missing_ok=True)


def is_stream(path: Path) -> bool:
    """Whether `path` names a device, a pipe or an open descriptor (/dev/null, /dev/stdout, /proc/self/fd/1), not a
    file in a folder: following its links, one into /proc's descriptors, or one to neither a file nor a folder."""
    for _ in range(MAX_LINK_HOPS):
        if path.is_relative_to("/proc"):  # /dev/stdout -> /proc/self/fd/1: the stream, even when it is a file
            return path.exists()
        if not path.is_symlink():
            break
        path = path.parent / os.readlink(path)
    return path.exists() and not path.is_file() and not path.is_dir()


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` into `path`, UTF-8, through `atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def check_periodic_checkpoints(output_dir: str | Path, resume: str | Path | None, prunes: bool) -> None:
    """Before training: refuse an output folder holding a checkpoint-<step> of another run, where this run `prunes`
    its periodic checkpoints (saves them, with a --save_total_limit). Pruning keeps the highest steps, so a
    checkpoint-15 left there would outrank this run's checkpoint-5, which would be deleted as soon as it is written.
    A run resumed from a checkpoint-<k> of this folder continues the run that wrote those up to k; any later one is
    another run's. Without pruning, this run's saves replace those of the same step and delete nothing."""
    path = Path(output_dir)
    if not prunes or not path.is_dir():
        return

    others = periodic_steps(path)
    resumed = Path(resume).resolve() if resume is not None else None
    if resumed is not None and resumed.parent == path.resolve() and PERIODIC_CHECKPOINT.fullmatch(resumed.name):
        others = [entry for entry in others if checkpoint_step(entry) > checkpoint_step(resumed)]
    if others:
        names = ", ".join(entry.name for entry in others[:5]) + (", ..." if len(others) > 5 else "")
        raise ArgumentError(
            f"--output_dir {output_dir} holds {names}, saved by another run: this run's own periodic checkpoints "
            "would rank below them and be deleted by --save_total_limit as soon as they are saved. Resume that run "
            f"(--resume_from_checkpoint {others[-1]}), move them away, or pass another --output_dir."
        )


def lock_output_dir(output_dir: str | Path) -> None:
    """Hold the output folder for the rest of this run (main process), so that a second run on it stops at once,
    told which process holds it, before it trains."""
    path = Path(output_dir)
    if not PartialState().is_main_process or path.resolve() in _HELD_LOCKS:
        return
    lock = try_lock(path)
    if lock is None:
        owner = sibling(path.parent / f".{path.name}", LOCK).read_text().strip() or "another process"
        raise PipelineError(
            f"--output_dir {output_dir} is in use by another run ({owner}). Wait for it to finish, or pass another "
            "--output_dir."
        )
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}: {shlex.join([python_command(), *sys.argv])}")
    lock.flush()
    _HELD_LOCKS[path.resolve()] = lock  # held until the process ends
    _RUN.update(output_dir=path, start=time.time(), existed=path.exists())


def interrupted_run() -> str:
    """What a run stopped by Ctrl-C kept, in words: the model it saved (the stop came after its final save), else the
    newest periodic checkpoint it saved and the command that resumes from it, else nothing. Only what this run wrote
    counts: a checkpoint's run settings, the last file a periodic save writes, or the model's marker, dated after the
    run locked its output folder (lock_output_dir; an evaluation, or a run stopped before that, saved nothing)."""
    if not _RUN:
        return "nothing was saved."
    output, start = _RUN["output_dir"], _RUN["start"]
    try:
        settle_checkpoint(output)  # a final save stopped during its swap: its complete model is then in place
    except OSError:
        pass  # what is left is settled by the next load or save, as after a kill

    def this_run(file: Path) -> bool:
        return file.is_file() and file.stat().st_mtime >= start

    if any(this_run(output / marker) for marker in CHECKPOINT_MARKERS):
        return f"this run's model was saved to {output} before the interruption."
    periodic = [
        folder
        for folder in output.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if PERIODIC_CHECKPOINT.fullmatch(folder.name) and this_run(folder / RUN_SETTINGS_FILE)
    ]
    if periodic:
        last = max(periodic, key=lambda folder: int(folder.name.rpartition("-")[2]))
        return f"the last periodic checkpoint, {last}, resumes it: {resume_command(last)}"
    as_it_was = f"; {output} is as it was" if _RUN["existed"] else ""
    return f"nothing of this run was saved{as_it_was}."


def resume_command(checkpoint: Path) -> str:
    """This run's command line with --resume_from_checkpoint `checkpoint` (in place of one it had)."""
    args, skip = [], False
    for word in sys.argv[1:]:
        if skip or word.startswith("--resume_from_checkpoint="):
            skip = False
        elif word == "--resume_from_checkpoint":
            skip = True
        else:
            args.append(word)
    args += ["--resume_from_checkpoint", str(checkpoint)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the launcher's own flags are not this process's to know
        return f"the same accelerate launch command with {shlex.join(args[-2:])}"
    return shlex.join([python_command(), sys.argv[0], *args])


def save_size(model_path: str | Path) -> int:
    """About the bytes a save of this model takes: twice its weight files on disk, since a bf16 checkpoint trained
    in fp32 (as on a CPU) saves in fp32. 0 for a model not downloaded or built yet."""
    path = Path(model_path)
    return 2 * sum(f.stat().st_size for pattern in CHECKPOINT_FILES["weights"] for f in path.glob(pattern))


def run_settings(*configs) -> dict:
    """Every setting of the run's config dataclasses that a resumed run must keep, as JSON values."""
    return {
        f.name: json.loads(json.dumps(getattr(config, f.name), default=str))
        for config in configs
        for f in dataclasses.fields(config)
        if not RESUMABLE_SETTINGS.fullmatch(f.name)
    }


def check_resume(checkpoint: str | Path | None, settings: dict) -> None:
    """Refuse to resume from `checkpoint` with `settings` other than those it was saved with, or with a damaged JSON
    file (no-op without one)."""
    if checkpoint is None:
        return
    file = Path(checkpoint) / RUN_SETTINGS_FILE
    if not file.is_file():
        raise PipelineError(
            f"{checkpoint} holds no {RUN_SETTINGS_FILE}: it is not a checkpoint-<step> folder that this pipeline's "
            "training saved, so whether this run would continue it with the same settings cannot be checked. "
            "Resume from one of those, or start a new run."
        )
    remedy = "Resume from another checkpoint-<step> folder, or start a new run."
    saved = read_checkpoint_json(file, remedy)
    for name, keys in CHECKPOINT_JSON.items():  # the model's own files, which the resume loads
        if (Path(checkpoint) / name).is_file():
            read_checkpoint_json(Path(checkpoint) / name, remedy, keys)
    changed = [
        f"--{key} {saved.get(key)!r} now {settings.get(key)!r}"
        for key in sorted(saved.keys() | settings.keys())
        if saved.get(key) != settings.get(key)
    ]
    if changed:
        raise PipelineError(
            f"{checkpoint} was saved by a run with other settings ({'; '.join(changed[:6])}"
            f"{f'; and {len(changed) - 6} more' if len(changed) > 6 else ''}). A resumed run must keep every setting "
            "that changes its data, randomness or optimisation: resume with the settings it was saved with, or start "
            "a new run."
        )


# What a resume reads besides the weights, by kind: what the state is, and what a resume without it starts afresh.
# The Trainer skips a missing optimizer.pt, scheduler.pt or rng_state.pth without a word, and accelerate's load_state
# (train_ppo.py) a random state it cannot read; check_training_state says it first, or refuses.
TRAINING_STATES = {
    "optimizer": (
        "the optimizer's state",
        "the optimizer starts afresh (Adam's moment estimates from zero: the first steps after the resume about as "
        "large as the learning rate, not as the run's)",
    ),
    "scheduler": ("the learning-rate schedule", "the learning-rate schedule starts again from its first step"),
    "rng": (
        "the random generators' state",
        "the random numbers drawn from there on (data order, sampling, dropout) differ from the uninterrupted run's, "
        "so its result is not that run's",
    ),
    "step": (
        "the step it was saved at",
        "the Trainer starts again at step 0 and trains every step again from the checkpoint's weights",
    ),
}
# The states' keys as each library saves them: the Trainer's rng_state.pth and accelerate's random_states_<i>.pkl hold
# Python's, NumPy's and torch's CPU generator (in that order here), and each GPU's where there is one.
RNG_KEYS = {
    "trainer": ("python", "numpy", "cpu", "cuda"),
    "accelerate": ("random_state", "numpy_random_seed", "torch_manual_seed", "torch_cuda_manual_seed"),
}
RESETS_FLAG = "--resume_resets_state"


def trainer_state_files(checkpoint: Path, world_size: int) -> dict[str, str]:
    """{file: kind of TRAINING_STATES} of what the Trainer resumes from a checkpoint-<step> besides its weights
    (Trainer._save_checkpoint): its optimizer and scheduler (under DeepSpeed, whose global_step<N> folder holds
    them, only the scheduler), each process's random state and the step count."""
    deepspeed = any(checkpoint.glob("global_step*"))
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    return (
        ({} if deepspeed else {"optimizer.pt": "optimizer"})
        | {"scheduler.pt": "scheduler"}
        | dict.fromkeys(rng, "rng")
        | {"trainer_state.json": "step"}
    )


def state_problem(file: Path, kind: str, rng_keys: tuple[str, ...] = RNG_KEYS["trainer"]) -> str | None:
    """Why `file`, a training state of `kind` (TRAINING_STATES), cannot be resumed from, or None: it is missing, or
    torch cannot read it (loaded as the Trainer loads it, weights only; the optimizer's memory-mapped, not read into
    memory), or it holds no state of its kind (a random state is set into spare generators, which checks it whole)."""
    if not file.is_file():
        return "is missing"
    if kind == "step":
        return _json_file(file, ("global_step",))[1]
    try:
        state = load_state_file(file, map_location="cpu", mmap=kind == "optimizer")
    except Exception:  # torch's unpickler raises many types for a cut or overwritten file; all mean the same
        return "is damaged (torch cannot read it)"
    if kind == "optimizer" and not (isinstance(state, dict) and {"state", "param_groups"} <= state.keys()):
        return "holds no optimizer state"
    if kind == "scheduler" and not isinstance(state, dict):
        return "holds no scheduler state"
    if kind == "rng":
        python, numpy, cpu, gpu = (state.get(key) if isinstance(state, dict) else None for key in rng_keys)
        try:
            random.Random().setstate(python)
            np.random.RandomState().set_state(numpy)
            torch.Generator().set_state(cpu)
        except Exception:  # each generator rejects a wrong state with its own type of error
            return "holds no usable random state"
        if torch.cuda.is_available() and gpu is None:
            return "holds no random state of the GPU"
    return None


def check_training_state(
    checkpoint: Path, files: dict[str, str], accept: bool, rng_keys=RNG_KEYS["trainer"]
) -> list[str]:
    """The `files` ({name: kind of TRAINING_STATES} in `checkpoint`) a resume must leave out, because they are missing
    or damaged, once --resume_resets_state (`accept`) accepts starting those states afresh, said in one line; without
    it a PipelineError that names them and what a resume without them would start afresh. [] when all are sound."""
    problems = {name: state_problem(checkpoint / name, kind, rng_keys) for name, kind in files.items()}
    problems = {name: problem for name, problem in problems.items() if problem is not None}
    resets = list(dict.fromkeys(TRAINING_STATES[files[name]][1] for name in problems))
    what = "; ".join(f"{name} ({TRAINING_STATES[files[name]][0]}) {problem}" for name, problem in problems.items())
    it, that = ("it", "that") if len(problems) == 1 else ("them", "those")
    if problems and not accept:
        raise PipelineError(
            f"{checkpoint} cannot be resumed as it was saved: {what}. Resumed without {it}, {'; and '.join(resets)}. "
            f"Resume from another checkpoint, start a new run, or add {RESETS_FLAG} to resume with {that} started "
            "afresh."
        )
    if problems:
        resumed = f"Resuming from {checkpoint} with {RESETS_FLAG}, where {what}"
        PartialState().print(f"{resumed}; so {'; and '.join(resets)}.")
    return list(problems)


def resume_view(checkpoint: Path, left_out: list[str]) -> Path:
    """A folder that is `checkpoint` without the files `left_out`: links to its other entries, in a temporary folder
    of this process removed when it ends. The libraries resume from it as from the checkpoint, and start a state
    whose file is absent afresh, where they would fail on a damaged one."""
    view = Path(tempfile.mkdtemp(prefix=f"{checkpoint.name}-resume-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for entry in checkpoint.resolve().iterdir():
        if entry.name not in left_out:
            (view / entry.name).symlink_to(entry)
    return view


def check_trainer_run(script_args, training_args, model_args, inputs: dict[str, str], kind: str) -> dict:
    """What the Trainer stages check before any data or model loads, in this order: a resumed run has the settings
    its checkpoint was saved with (check_resume) and its whole training state, or --resume_resets_state
    (check_training_state; the Trainer then resumes from a view without the states it starts afresh), and the output
    folder can take the model (check_output_dir), is none of the `inputs` ({flag: folder} of the models the run reads,
    the one it trains first: its size is the save's), holds no model of another `kind` than the one it writes, and
    holds no other run's periodic checkpoints (check_periodic_checkpoints). The run's settings, for
    SaveRunSettings."""
    settings = run_settings(script_args, training_args, model_args)
    check_resume(training_args.resume_from_checkpoint, settings)
    if training_args.resume_from_checkpoint is not None:
        checkpoint = Path(training_args.resume_from_checkpoint)
        files = trainer_state_files(checkpoint, training_args.world_size)
        left_out = check_training_state(checkpoint, files, script_args.resume_resets_state)
        if left_out:
            training_args.resume_from_checkpoint = str(resume_view(checkpoint, left_out))
    check_output_dir(training_args.output_dir, inputs, save_size(next(iter(inputs.values()))), kind)
    prunes = training_args.save_strategy != "no" and bool(training_args.save_total_limit)
    check_periodic_checkpoints(training_args.output_dir, training_args.resume_from_checkpoint, prunes)
    return settings


def write_run_settings(folder: Path, settings: dict) -> None:
    write_text_atomic(folder / RUN_SETTINGS_FILE, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


class SaveRunSettings(TrainerCallback):
    """Writes the run's settings into each checkpoint-<step> the Trainer saves, for `check_resume`."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_run_settings(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", self.settings)


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
    # A sum is NaN or inf where a value is, and about 20 times faster than testing each value (0.16 s for the 0.5B
    # critic on one CPU thread); the test, run only then, tells a sum that overflowed from finite values apart.
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
    return PipelineError(
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


def build_tiny_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer trained on `texts`, with Qwen's special tokens and Qwen2.5's chat template.

    Every Chinese character is a token of its own: merges stop at character boundaries, as in Chinese BERT's
    vocabulary. Merged across characters, 3,644 of the 6,000 tokens were words and phrases (烦我, 别烦我, 来烦我,
    烦死了, 很烦 ... and 懒得理你 whole), each seen a few times, and a reward model trained on 310 pairs learned
    those tokens rather than the characters they share: it ranked 0.62 to 0.69 of the pairs in styles the sample
    does not use right, against 0.89 to 0.94 now (data/README.md).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, CHAT_START_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=qwen2_5_chat_template,
        model_max_length=TINY_MODEL_CONFIG["max_position_embeddings"],
    )


def build_tiny_base(path: str | Path, seed: int = TINY_SEED) -> None:
    """Build the offline tiny base at `path`: tokenizer, random Qwen2 weights, then a short SFT on polite answers.

    Only the sample's training rows at the default --eval_fraction (split_held_out) go into the tokenizer and the
    SFT: a base that had read the held-out answers would let the reward model tell them apart by "text the base
    knows" rather than by style (data/README.md). Deterministic for a given seed. Saved as a checkpoint is
    (`staged_save`), so an interrupted build never leaves a folder that looks complete, and a base built by another
    recipe (resolve_model) is replaced whole.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    path = Path(path)
    if path.is_dir():
        print(
            f"{path} was built by another recipe of the tiny preset (an earlier version of this project, or other "
            "sample data): building it again. Models trained from the old one need training again; the stages after "
            "them refuse a model whose tokenizer differs from the policy's."
        )
    print(f"Building the tiny base model at {path} (once; later runs reuse it).")
    data, _ = split_held_out(load_preference_data(SAMPLE_DATA), DEFAULT_EVAL_FRACTION)
    texts = [DEFAULT_SYSTEM_PROMPT] + [row[c] for row in data for c in REQUIRED_COLUMNS]
    tokenizer = build_tiny_tokenizer(texts)

    set_seed(seed)
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD_TOKEN, EOS_TOKEN])
    config = Qwen2Config(
        vocab_size=len(tokenizer), bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id, **TINY_MODEL_CONFIG
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[eos_id, pad_id], **QWEN_GENERATION_DEFAULTS
    )

    polite = data.map(
        sft_example,
        fn_kwargs={"system_prompt": DEFAULT_SYSTEM_PROMPT, "answer_column": "rejected"},
        remove_columns=data.column_names,
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            seed=seed,
            bf16=False,  # fp32 everywhere, so the same seed gives the same weights
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            logging_strategy="epoch",  # the loss in the progress bar, once an epoch
            dataloader_pin_memory=accelerator_available(),
            **TINY_BASE_TRAINING,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=polite, processing_class=tokenizer)
        compact_progress(trainer)
        trainer.train()
    with staged_save(path) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / TINY_RECIPE_FILE).write_text(json.dumps(tiny_recipe(seed), indent=2) + "\n")


def _build_tiny_base_alone(path: Path) -> None:
    """`build_tiny_base` in a child process of its own, for a run of several processes: the build trains with a
    Trainer, which inside this process would join the other processes' process group and train with them.

    The child also drops torchrun's OMP_NUM_THREADS=1: it runs alone while the others wait, and with every core it
    builds the same bits as a plain `python` run (the thread count changes the order of fp32 sums)."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")
    env = {key: value for key, value in os.environ.items() if key not in launcher and not key.startswith("ACCELERATE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    build = "import sys, common; common.build_tiny_base(sys.argv[1])"
    if subprocess.run([sys.executable, "-c", build, str(path)], env=env).returncode != 0:
        raise PipelineError(f"building the tiny base model at {path} failed (its error is above).")


# ----------------------------------------------------------------------------------------------------------------
# Logging and charts

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


def compact_progress(trainer) -> None:
    """Swap the Trainer's progress bar for `CompactProgress` (none with --disable_tqdm, which asks for plain logs)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress)


def tensorboard_run(stage: str, continued: str | Path | None = None) -> Path:
    """tensorboard/<stage>/<YYYY-mm-dd HH-MM-SS>, one folder per run as the original, and point the Trainer's
    TensorBoard callback at it: transformers 5 reads TENSORBOARD_LOGGING_DIR (TrainingArguments.logging_dir is
    gone). `continued`, a run folder that exists, is reused instead (a resumed run continues its curves).

    Every process calls this under accelerate launch; the main process creates the folder, exclusively, with a suffix
    if a run started in the same second already has the name, and every process gets its name.
    """
    state = PartialState()
    run_dir = Path(continued) if continued is not None and Path(continued).is_dir() else None
    if run_dir is None and state.is_main_process:
        stamp = TENSORBOARD_ROOT / stage / time.strftime("%Y-%m-%d %H-%M-%S")
        for attempt in itertools.count(1):
            run_dir = stamp if attempt == 1 else stamp.with_name(f"{stamp.name}-{attempt}")
            try:
                run_dir.mkdir(parents=True)  # fails if the folder exists: two runs never share one
                break
            except FileExistsError:
                continue
    if state.num_processes > 1:
        run_dir = Path(broadcast_object_list([run_dir])[0])
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir)
    return run_dir


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a TensorBoard run logged, as tag -> [(step, value), ...].

    Points a resumed run replaced (train_ppo.py's purge_step) are left out; the reader's warning that it left them
    out, worded as if TensorFlow had crashed ("Detected out of order event.step ... Purging expired events"), is
    filtered here, where that purge is what was asked for.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def not_a_purge(record: logging.LogRecord) -> bool:
        return "Purging expired events" not in record.getMessage()

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every point
    reader_log = logging.getLogger("tensorboard")
    reader_log.addFilter(not_a_purge)
    try:
        events.Reload()
    finally:
        reader_log.removeFilter(not_a_purge)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def smoothed(values: list[float], weight: float = CHART_SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so that the first points are not pulled
    towards 0 (tensorboard/plugins/scalar/tf_scalar_dashboard, the "Smoothing" slider)."""
    average, result = 0.0, []
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        result.append(average / (1 - weight**count))
    return result


def curves_note(run_dir: str | Path, tags: list[str], title: str, report_to: list[str]) -> str:
    """ "; curves in <chart>" for a Trainer stage's last line (plot_scalars), or "" where the run logged nothing to
    TensorBoard (--report_to without tensorboard): there are no points to chart, and the model is saved already."""
    return f"; curves in {plot_scalars(run_dir, tags, title)}" if "tensorboard" in report_to else ""


def plot_scalars(run_dir: str | Path, tags: list[str], title: str, xlabel: str = "step") -> Path:
    """Chart the given scalars of a TensorBoard run into <run_dir>/<stage>.png, beside the run's events, and return
    its path (tags the run lacks are skipped). At most CHART_COLUMNS panels a row, so that it reads at README width;
    each panel draws the raw values faintly and their smoothed line over them."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    tags = [tag for tag in tags if tag in scalars]
    if not tags:
        raise PipelineError(f"the TensorBoard run {run_dir} logged none of the scalars to chart.")
    rows = math.ceil(len(tags) / CHART_COLUMNS)
    columns = math.ceil(len(tags) / rows)  # rows filled evenly: 4 panels are 2 x 2, not 3 + 1
    figure = Figure(figsize=(CHART_PANEL_SIZE[0] * columns, CHART_PANEL_SIZE[1] * rows), layout="constrained")
    panels = list(figure.subplots(rows, columns, squeeze=False).flat)
    for axes, tag in zip(panels, tags):
        steps, values = zip(*scalars[tag])
        (raw,) = axes.plot(steps, values, alpha=0.3, linewidth=1)
        axes.plot(steps, smoothed(values), color=raw.get_color(), linewidth=1.8)
        axes.set_title(tag, fontsize="medium")
        axes.set_xlabel(xlabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and updates are whole numbers
        axes.grid(alpha=0.3)
    for axes in panels[len(tags) :]:  # the empty places of a last row that is not full
        axes.remove()
    figure.suptitle(f"{title}\nfaint: every logged value; solid: smoothed as in TensorBoard ({CHART_SMOOTHING})")
    out_path = run_dir / f"{run_dir.parent.name}.png"
    with atomic_file(out_path) as temporary:
        figure.savefig(temporary, dpi=CHART_DPI)
    return out_path
