"""Process-wide tuning, set before any work starts: OpenMP's idle threads and glibc's allocator.

Imports only the standard library, so `python -m service` and the benchmarks can call it before torch loads.
"""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameter numbers (malloc.h) and the values the service sets, by their environment names.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, 1), "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 8 * 2**20),
                   "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 32 * 2**20)}


def set_openmp_wait_policy() -> None:
    """Idle OpenMP threads sleep instead of spinning; call before torch loads OpenMP.

    The ONNX Runtime backend leaves torch only the glue (crops, resizes, clamps), whose small parallel
    regions would otherwise spin both cores between them; measured on 2 shared cores (bench/scaling.py):
    2-5x less CPU time for small x2.5 requests. The operator's setting wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def tune_malloc() -> None:
    """glibc's allocator for this workload (glibc only; a setting in the environment wins).

    - One arena for all threads (MALLOC_ARENA_MAX=1): a request's tiles are allocated and freed
      across the pool, band and encoder threads; with an arena per thread, freed pages sit in one
      arena while another asks the kernel for fresh ones (measured: 256x256 -> x4 requests about 8%
      slower, bench/service.py overhead).
    - Blocks of 8 MB and more straight from the kernel, and back to it when freed
      (MALLOC_MMAP_THRESHOLD_): by default glibc raises that threshold up to 32 MB as large blocks
      are freed, and the band-sized buffers of a large image then stay in the heap, fragmented
      (measured: 64 MP through IMDN_AS peaked 170 MB higher, bench/engine_memory.py).
    - Up to 32 MB of free heap kept (MALLOC_TRIM_THRESHOLD_): a fixed mmap threshold leaves the trim
      threshold at 128 KB, and the encoder's buffers were then faulted in afresh for every request
      (256x256 -> x4: 24 ms of encoding instead of 11, bench/service.py overhead).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for variable, (parameter, value) in MALLOC_SETTINGS.items():
        if variable not in os.environ:
            libc.mallopt(parameter, value)


def trim_malloc() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim; elsewhere nothing). Buffers under
    the mmap threshold are freed into the heap, and its free pages between blocks still in use stay in RSS:
    after four cancelled 4 MP requests, 110 MB that nothing referenced. Called when the model pool goes idle."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)
