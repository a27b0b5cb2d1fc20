"""fusedopt's parallel regions on torch's own OpenMP threads, and putting torch's idle workers
to sleep.

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

Parking still costs the step a region of its own (120-140 us right after a backward, 2-core VM)
and helps only steps large enough to amortize it. use_torch_threads, on by default once
fusedopt.torch is imported, does without it: fusedopt's regions run on torch's libgomp team
(GOMP_parallel, as DeepSpeed's CPU Adam runs on torch's OpenMP), so the spinning workers are the
step's own threads, already awake. park_workers remains the bench's way to time a step without
spinning workers.
"""
from __future__ import annotations

import ctypes
import os

import torch

from .. import _core


class TorchOpenMP:
    """torch's libgomp: an empty region of torch's threads + 1."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # loaded by torch already: the same runtime, not a second one
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        self._noop = ctypes.cast(ctypes.CDLL(None).free, ctypes.c_void_p).value  # free(NULL): nothing
        self.parallel_address: int = ctypes.cast(self._parallel, ctypes.c_void_p).value or 0

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


def use_torch_threads(enabled: bool = True) -> bool:
    """Run fusedopt's parallel regions (every multi-threaded fusedopt call of this process, on
    tensors or arrays) on torch's OpenMP threads, or (False) on fusedopt's own pool. Returns
    whether torch's threads are in use: False also where torch's parallel backend is not libgomp.
    The thread count stays fusedopt.set_num_threads'; results are the same bits either way. A
    forked child runs on its own pool (libgomp's threads do not survive fork)."""
    runtime = find() if enabled else None
    _core._set_openmp_parallel(runtime.parallel_address if runtime is not None else 0)
    return runtime is not None
