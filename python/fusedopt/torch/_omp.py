"""Running a step's pieces on torch's own OpenMP threads.

In a training loop the optimizer step follows backward, and torch's OpenMP workers keep spinning
for milliseconds after each parallel region (libgomp's default wait policy). fusedopt's own pool
then shares a core with a spinning thread. Handing the step to torch's OpenMP runtime instead
(libgomp's GOMP_parallel, the entry point `#pragma omp parallel` compiles to) runs it on the
very threads that spin: each takes its piece of the step and calls the fusedopt kernel, one
thread each. The pieces are cut from the step's arrays as flat, 64-byte-aligned slices, so the
results are bitwise those of one call (the updates are elementwise).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class TorchOpenMP:
    """torch's libgomp, when torch's intra-op parallel backend is OpenMP on libgomp."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # already loaded by torch: the same library, not a second runtime
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        self._thread_num = lib.omp_get_thread_num
        self._num_threads = lib.omp_get_num_threads

    def run(self, nthreads: int, npieces: int, piece: Callable[[int], Any]) -> None:
        """piece(k) for k in range(npieces), on a team of up to nthreads of torch's OpenMP
        threads (the caller among them); the first exception raised is raised here after all."""
        errors: list[BaseException] = []

        def body(_: Any) -> None:
            try:
                for k in range(self._thread_num(), npieces, self._num_threads()):
                    piece(k)
            except BaseException as e:  # noqa: BLE001 - a ctypes callback cannot raise: re-raised below
                errors.append(e)

        self._parallel(_BODY(body), None, nthreads, 0)
        if errors:
            raise errors[0]


def find() -> TorchOpenMP | None:
    """torch's libgomp, or None (another backend or OpenMP runtime, or not found)."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]})
    except OSError:
        return None
    paths.sort(key=lambda p: not p.startswith(torch_dir))  # torch's own first
    for path in paths:
        try:
            return TorchOpenMP(path)
        except (OSError, AttributeError):
            continue
    return None
