"""meter.PhaseMeter: each phase of a PPO update gets its own seconds and its own peak memory, not the peak of
every phase before it."""

import os
import time

import pytest
import torch

from hfppo import meter

MIB = 2**20


@pytest.mark.skipif(not os.access(meter.CLEAR_REFS, os.W_OK), reason="this system cannot reset the peak RSS")
def test_each_phase_has_its_own_peak_memory():
    phases = meter.PhaseMeter(torch.device("cpu"))
    with phases("large"):
        large = torch.ones(512 * MIB // 4)  # written: every page resident
        del large
    with phases("small"):
        small = torch.ones(16 * MIB // 4)
        del small
    # the large phase held 512 MiB more than the process holds otherwise; the small one, measured from its own
    # start, does not count them (on a GPU max_memory_allocated is reset the same way)
    assert phases.peak_gib["large"] - phases.peak_gib["small"] > 400 * MIB / 2**30


def test_each_phase_has_its_own_seconds():
    phases = meter.PhaseMeter(torch.device("cpu"))
    with phases("wait"):
        time.sleep(0.2)
    with phases("none"):
        pass
    assert phases.seconds["wait"] >= 0.2 > phases.seconds["none"]
