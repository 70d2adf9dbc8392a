"""runtime.keep_freed_memory: memory that a step frees serves the next step's allocations, instead of going back to
the kernel and being faulted in again page by page."""

import ctypes
import os
import resource
import subprocess
import sys

from hfppo import paths

BLOCK = 16 * 2**20  # under keep_freed_memory's mmap threshold (32 MiB)
BLOCKS = 8  # 128 MiB in all: glibc's default trims a free heap top past 64 MiB at most
PAGES = BLOCKS * BLOCK // resource.getpagesize()


def page_faults_of_reallocation() -> int:
    """Page faults taken while BLOCKS blocks are allocated and written again after the same were freed, as by two
    training steps in a row (through the C library's malloc: no Python object lands between them)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)
        for block in blocks:
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults[-1]


def test_freed_memory_is_reused_without_page_faults():
    assert page_faults_of_reallocation() < PAGES / 100  # glibc's default: every page (32,768) faulted in again


def test_a_users_own_glibc_setting_is_kept():
    """With one of glibc's variables set (here MALLOC_TRIM_THRESHOLD_ to glibc's default), the user's choice stands."""
    check = "from hfppo import runtime; runtime.setup(); import tests.test_memory as t; "
    check += "print(t.page_faults_of_reallocation())"
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072", PYTHONPATH=str(paths.ROOT))
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) > PAGES * 0.9
