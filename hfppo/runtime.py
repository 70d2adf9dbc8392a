"""The process's setup, made once at the start of every script (`setup`), and what the machine offers."""

import codecs
import ctypes
import os
import sys
import warnings

import datasets
import torch
from accelerate.utils import DistributedType

from hfppo import errors

# glibc's mallopt parameters (malloc.h), the variables a user sets them with, and what keep_freed_memory sets: blocks
# up to 32 MiB come from the heap from the start (the most glibc's own adaptive threshold reaches), and the heap's free
# top goes back to the kernel past 2 GiB (mallopt takes an int), not past twice that threshold.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 2**31 - 1
# The encodings the C and POSIX locales give Python's streams and command line where its UTF-8 mode is off (PEP 540
# turns it on for them by default; PYTHONUTF8=0 or an older build leaves it off).
LOCALE_WITHOUT_CHARSET = ("ascii",)
# The sharding each accelerate config asks for, and the variable `accelerate launch` sets for it.
DISTRIBUTED_ENVIRONMENT = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


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


def readable_output() -> None:
    """Have stdout and stderr take any text, whatever the locale: the scripts print Chinese (the sample's questions
    and answers, the default system prompt), which a stream in the C locale's ASCII cannot encode (a traceback).

    The C and POSIX locales mean that no locale was set (a container, cron, ssh), and the terminal or file behind them
    takes UTF-8. Where Python's UTF-8 mode is off there (PYTHONUTF8=0, an older build), the command line and every path
    were read as ASCII: a --question in Chinese would reach the tokenizer as surrogates, and re-reading it as UTF-8
    would leave a Chinese path that the ASCII file system encoding cannot open. So the script starts again in UTF-8
    mode (`python -X utf8`, what PEP 540 does in those locales by default). Any stream left in ASCII is switched to
    UTF-8 for the same reason. A stream in another encoding that lacks some characters (Latin-1) was chosen by its
    user: it keeps its encoding, and a character it lacks prints as a \\uXXXX escape, never a traceback."""
    if codecs.lookup(sys.getfilesystemencoding()).name in LOCALE_WITHOUT_CHARSET and not sys.flags.utf8_mode:
        os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if encoding is None or not hasattr(stream, "reconfigure") or encodes_all(encoding):
            continue
        if codecs.lookup(encoding).name in LOCALE_WITHOUT_CHARSET:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        else:
            stream.reconfigure(errors="backslashreplace")


def encodes_all(encoding: str) -> bool:
    """Whether `encoding` encodes every character (UTF-8, UTF-16, UTF-32, GB18030): tried on one outside the Basic
    Multilingual Plane, which the encodings of a part of Unicode lack."""
    try:
        "\U0001f600".encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def bf16_available() -> bool:
    """bf16 only on a GPU with bf16 units: a CPU without them runs a fallback GEMM many times slower than fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accelerator_available() -> bool:
    """Whether there is a GPU (or other accelerator) to copy batches to. The Trainer's DataLoader pins memory only
    then (dataloader_pin_memory): without one, pinning does nothing and torch warns about it at every run."""
    return torch.accelerator.is_available()


def require_one_process(script: str) -> None:
    """The eval scripts run in one process: under `accelerate launch` every process would repeat the same work."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise errors.PipelineError(
            f"{script} runs in one process; start it with python {script}, not accelerate launch or torchrun."
        )


def check_distributed(state) -> None:
    """Stop a run that `accelerate launch` started on several processes under a config accelerate did not honour.
    Without a GPU, accelerate 1.15 runs fsdp.yaml and the ZeRO configs as plain DDP under --cpu (ACCELERATE_USE_CPU),
    and without it as processes that never meet, each process 0 of 1, all writing the same outputs
    (accelerate/state.py: only GPU-like devices lead to FSDP and DeepSpeed). `state`: the run's PartialState."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = [name for name, key in DISTRIBUTED_ENVIRONMENT.items() if os.environ.get(key, "").lower() == "true"]
    as_ddp = wanted and state.distributed_type == DistributedType.MULTI_CPU
    if world > 1 and (state.num_processes != world or as_ddp):
        raise errors.PipelineError(
            f"accelerate launch started {world} processes for {' and '.join(wanted) or 'DDP'}, but accelerate runs "
            f"them as {state.distributed_type.value} with {state.num_processes} process(es): FSDP and DeepSpeed need "
            "GPUs in accelerate 1.15. On CPUs, run accelerate launch --cpu --config_file configs/accelerate/ddp.yaml "
            "(docs/distributed.md)."
        )


def setup() -> None:
    """What every script does first, in `if __name__ == "__main__":` (and the tests, which run `main` in process):
    the allocator setting, the warning filters and the progress bars off. Made here, not on import, so that reading a
    module changes nothing in the process that reads it."""
    readable_output()
    # A stage's datasets.map, filter and to_json calls run over a few hundred rows in well under a second each, yet
    # drew five to eight progress bars per stage (TRL's tokenize, truncate, drop-masked, build-labels passes): bars
    # that say nothing. Training and generation keep theirs.
    datasets.disable_progress_bars()
    # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` alias in every PeftModel it builds or loads
    # (PPO, DPO, GRPO, the comparison, the chat page): a FutureWarning no user can act on, silenced by its exact text
    # where it is raised.
    warnings.filterwarnings(
        "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning, "transformers.modeling_utils"
    )
    keep_freed_memory()
    # accelerate's unwrap_model imports DeepSpeed wherever it is installed (requirements-deepspeed.txt, for the ZeRO
    # configs), and DeepSpeed warns at import that it found no GPU and fell back to the CPU: where there is none, it is
    # told.
    if not accelerator_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
