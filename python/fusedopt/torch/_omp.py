"""Putting torch's idle OpenMP workers to sleep before a step runs on fusedopt's own pool.

In a training loop the optimizer step follows backward, and torch's OpenMP workers (libgomp)
spin for milliseconds after each parallel region before they sleep (GOMP_SPINCOUNT's 300,000
pause loops): a core that fusedopt's pool wants is busy doing nothing. libgomp spins only 1,000
loops when it manages more threads than the process has CPUs. So before a large step we run one
empty parallel region of torch's thread count + 1 threads on torch's libgomp: the spinning
workers join it, and afterwards, waiting with one thread more than CPUs, they sleep within
microseconds. torch's next region (of its usual size) retires the extra thread, and its workers
spin as before: torch's own speed is untouched. The region's body is a C function taking a
pointer that does nothing with NULL (libc's free), so no thread needs the GIL (a region whose
threads called back into Python cost 17-22 ms here: each waited for the GIL).
"""
from __future__ import annotations

import ctypes
import os

import torch


class TorchOpenMP:
    """torch's libgomp: an empty region of torch's threads + 1."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # loaded by torch already: the same runtime, not a second one
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        self._noop = ctypes.cast(ctypes.CDLL(None).free, ctypes.c_void_p).value  # free(NULL): nothing

    def park_workers(self) -> None:
        """Make torch's idle OpenMP workers sleep now instead of spinning (see the module docstring)."""
        threads = torch.get_num_threads()
        if threads > 1:
            self._parallel(self._noop, None, threads + 1, 0)


def find() -> TorchOpenMP | None:
    """torch's libgomp, or None: another parallel backend or OpenMP runtime, or not found."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libgomp")}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: not p.startswith(torch_lib)):  # torch's own first
        try:
            return TorchOpenMP(path)
        except (OSError, AttributeError):
            continue
    return None
