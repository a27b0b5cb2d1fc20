"""Checkpoint files of fusedopt.optim's optimizers: fusedopt.optim.save and fusedopt.optim.load."""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import _is_bfloat16
from ._tensors import _bfloat16
from .lowbit import QuantizedState

if TYPE_CHECKING:
    from .optim import Optimizer

CHECKPOINT_FORMAT = "fusedopt.optim checkpoint 1"


def save(path: str | os.PathLike[str], opt: Optimizer) -> None:
    """Write opt.state_dict() to the .npz file `path`, atomically.

    The arrays are stored as "state/<index>/<name>", the rest as JSON in "meta" (no pickle);
    8-bit state as "state/<index>/<name>/codes" and ".../scales" (bitwise) and bfloat16 state as
    its uint16 bits (.npy has no bfloat16), each named in meta["encoded"][index][name] ("int8
    signed", "int8 unsigned" or "bfloat16"). The file
    is written under a temporary name in the same directory, flushed to disk, then renamed over
    `path`: a crash at any point leaves either the previous file or the new one, never a mix.
    """
    state_dict = opt.state_dict()
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    encoded: dict[str, dict[str, str]] = {}
    for i, state in state_dict["state"].items():
        scalars[str(i)] = {name: value for name, value in state.items()
                           if not isinstance(value, (np.ndarray, QuantizedState))}
        for name, value in state.items():
            if isinstance(value, QuantizedState):
                arrays[f"state/{i}/{name}/codes"], arrays[f"state/{i}/{name}/scales"] = value.codes, value.scales
                encoded.setdefault(str(i), {})[name] = "int8 signed" if value.signed else "int8 unsigned"
            elif isinstance(value, np.ndarray):
                if _is_bfloat16(value.dtype):
                    value = value.view(np.uint16)
                    encoded.setdefault(str(i), {})[name] = "bfloat16"
                arrays[f"state/{i}/{name}"] = value
    meta = {"format": CHECKPOINT_FORMAT, "optimizer": type(opt).__name__,
            "param_groups": state_dict["param_groups"], "state": scalars, "encoded": encoded}
    arrays["meta"] = np.array(json.dumps(meta))

    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # same directory: the rename stays atomic
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds clash with allow_pickle: bool
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # POSIX: fsync the directory too, so that the rename itself survives a power loss. Best effort:
    # some file systems refuse fsync on a directory, and the new checkpoint is in place by now.
    if hasattr(os, "O_DIRECTORY"):
        try:
            fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass


def load(path: str | os.PathLike[str], opt: Optimizer) -> None:
    """Load a checkpoint written by save() into opt (of the same class, over params of the same
    shapes and dtypes). A truncated, corrupt or mismatched file raises ValueError or TypeError and
    leaves opt as it was."""
    try:
        with open(path, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz file")
            with npz:
                meta = json.loads(str(npz["meta"][()]))
                arrays = {key: npz[key] for key in npz.files if key != "meta"}  # reads (and CRC-checks) all
        if not (isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT
                and isinstance(meta.get("state"), dict) and isinstance(meta.get("encoded", {}), dict)
                and all(isinstance(names, dict) for names in meta.get("encoded", {}).values())):
            raise ValueError(f"its meta is not a {CHECKPOINT_FORMAT!r}")
        state = {int(i): dict(scalars) for i, scalars in meta["state"].items()}
        encoded = meta.get("encoded", {})
        parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}  # 8-bit state's codes and scales
        for key, array in arrays.items():
            prefix, i, name, *part = key.split("/")
            if prefix != "state" or part not in ([], ["codes"], ["scales"]):
                raise ValueError(f"unexpected array {key!r}")
            how = encoded.get(i, {}).get(name)
            if part:
                parts.setdefault((int(i), name), {})[part[0]] = array
            elif how == "bfloat16" and array.dtype == np.uint16:
                state.setdefault(int(i), {})[name] = array.view(_bfloat16())
            elif how is None:
                state.setdefault(int(i), {})[name] = array
            else:
                raise ValueError(f"array {key!r} is not the {how!r} its meta says")
        for (index, name), arrays_ in parts.items():
            how = encoded.get(str(index), {}).get(name)
            if how not in ("int8 signed", "int8 unsigned") or set(arrays_) != {"codes", "scales"}:
                raise ValueError(f"state/{index}/{name}: {sorted(arrays_)} of {how!r}; 8-bit state is codes and scales")
            codes, scales = arrays_["codes"], arrays_["scales"]
            state.setdefault(index, {})[name] = QuantizedState(codes, scales, how == "int8 signed")
    except FileNotFoundError:
        raise
    # (zipfile raises NotImplementedError for a compression method or version it does not know,
    # RuntimeError for an encrypted member: a corrupted directory entry gives either)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as e:
        raise ValueError(f"{path} is not a readable fusedopt optimizer checkpoint: {type(e).__name__}: {e}") from None
    if meta.get("optimizer") != type(opt).__name__:
        raise ValueError(f"{path} is a checkpoint of {meta.get('optimizer')!r}, not of {type(opt).__name__}")
    opt.load_state_dict({"state": state, "param_groups": meta.get("param_groups")})
