"""The bench's optional dependencies, imported once; tests set them to None to see the CLI
without them."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

BENCH_EXTRA = 'pip install ".[bench]"'  # torch 2.13.0 (CPU) and matplotlib


def _optional(name: str) -> Any:
    return importlib.import_module(name) if importlib.util.find_spec(name) is not None else None


torch: Any = _optional("torch")


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None
