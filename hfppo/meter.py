"""The seconds and the peak memory of each phase of a PPO update (time/<phase> and memory/<phase>_gib)."""

import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Linux's per-process peak resident set (VmHWM), and the file whose value 5 resets it to the current one (proc(5)).
STATUS, CLEAR_REFS, RESET_PEAK_RSS = Path("/proc/self/status"), Path("/proc/self/clear_refs"), "5"


def reset_peak(device: torch.device) -> None:
    """Start measuring a new peak. On a CPU without Linux's reset (another OS, a locked-down /proc) the peak stays the
    process's so far, so a phase's figure is then the highest of it and every phase before it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
    except OSError:
        pass


def peak_gib(device: torch.device) -> float:
    """The peak since `reset_peak`, in GiB: on a GPU the most its tensors held (what a GPU budget is about), elsewhere
    the process's resident set (VmHWM, or ru_maxrss where /proc has none; both KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        kib = int(re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)[1])
    except (OSError, TypeError):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20


class PhaseMeter:
    """`with meter("generation"): ...` records the phase's wall seconds, after the GPU has finished the work queued in
    it, and its peak memory; `seconds` and `peak_gib` map each phase to its latest figures."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        reset_peak(self.device)
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[phase] = time.perf_counter() - started
        self.peak_gib[phase] = peak_gib(self.device)
