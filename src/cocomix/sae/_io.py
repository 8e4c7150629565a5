"""Shared helpers of the SAE loaders: read tensors-only files and JSON, check keys and shapes (no paper equation).

Every problem with a file raises `CheckpointError` with one line naming the file and what was expected.
Nothing here unpickles arbitrary objects: safetensors files hold tensors only, and `.pt` files are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from cocomix import json_text
from cocomix.errors import CheckpointError, load_failure


def read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    """All tensors of a safetensors file, on CPU. `what` says what the file should hold, for the error message."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected {what})")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (expected {what}): {exc}") from exc


def read_torch_weights(path: Path, what: str) -> Any:
    """A `.pt` file loaded with `weights_only=True` (tensors, numbers, strings, containers; never code)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected {what})")
    try:
        with warnings.catch_warnings():  # torch's note on a newer pickle protocol: the load itself answers for it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:  # weights_only refuses any other object with an UnpicklingError; corrupt files vary
        raise CheckpointError(
            f"{path}: cannot be loaded as plain tensors with weights_only=True (expected {what}): {load_failure(exc)}"
        ) from exc


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected {what})")
    try:
        data = json_text.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # (ValueError: JSONDecodeError, UnicodeDecodeError, nesting too deep)
        raise CheckpointError(f"{path}: not valid JSON (expected {what}): {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


# the dtypes an SAE file may hold (SAELens's `str_to_dtype` takes these too; float8 has no isfinite, no matmul)
SAE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def get_tensor(tensors: Mapping[str, Any], key: str, path: Path, ndim: int) -> Tensor:
    """`tensors[key]`, checked to be a dense, non-empty tensor of one of SAE_DTYPES with `ndim` dimensions."""
    if key not in tensors:
        present = ", ".join(sorted(map(str, tensors))) or "none"
        raise CheckpointError(f"{path}: missing tensor {key!r} (present: {present})")
    value = tensors[key]
    if (not isinstance(value, Tensor) or value.dtype not in SAE_DTYPES or value.ndim != ndim
            or value.layout != torch.strided or value.numel() == 0 or value.is_meta):  # (meta: no values)
        got = (f"shape {tuple(value.shape)} {value.dtype}" + ("" if value.layout == torch.strided else
                                                              f" {value.layout}") + (" on meta" * value.is_meta)
               if isinstance(value, Tensor) else type(value).__name__)
        raise CheckpointError(f"{path}: {key!r} must be a dense, non-empty {ndim}-D tensor of float32, float64, "
                              f"float16 or bfloat16, got {got}")
    return value


def check_k(path: str | Path, k: Any) -> None:
    """CheckpointError unless the TopK size asked for is None (the file's) or a whole number >= 1 (4.7, "4" and
    True are not: converting them would load another SAE than asked for)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise CheckpointError(f"{path}: k must be a whole number >= 1 (the SAE's TopK size), got {k!r}")


def check_shape(path: Path, key: str, value: Tensor, expected: tuple[int, ...]) -> None:
    """Raise if `value` does not have shape `expected`."""
    if tuple(value.shape) != expected:
        raise CheckpointError(f"{path}: {key!r} has shape {tuple(value.shape)}, expected {expected}")


def get_int(cfg: dict[str, Any], key: str, path: Path, minimum: int = 1) -> int:
    """`cfg[key]` as an int >= minimum."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{path}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def common_dtype(path: Path, tensors: dict[str, Tensor]) -> torch.dtype:
    """The one floating dtype shared by `tensors` (mixed dtypes are refused)."""
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise CheckpointError(f"{path}: SAE tensors have mixed dtypes {sorted(map(str, dtypes))}, expected one")
    return dtypes.pop()
