"""`resolve_device`: which device a setting or flag names, and one-line errors naming it for a device this machine
does not have (CUDA's presence and GPU count are patched: the check runs on a CPU-only machine too)."""

from __future__ import annotations

import pytest
import torch

from cocomix.errors import ConfigError
from cocomix.train.device import resolve_device


def test_cpu_and_auto_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only case")
    assert resolve_device("cpu") == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda:0' requested but CUDA is not available$"):
        resolve_device("cuda:0", "--device")
    with pytest.raises(ConfigError, match=r"^train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'$"):
        resolve_device("gpu")


def test_a_gpu_index_the_machine_lacks_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch would fail with a traceback at `set_device` ("invalid device ordinal"): said in one line instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"^train.device: 'cuda:2' requested but this machine has 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match=r"^--device: 'cuda:7' requested but this machine has 2 CUDA device"):
        resolve_device("cuda:7", "--device")
    for bad in ("cuda:01", "cuda:\u00b2", "cuda:-1", "cuda:"):  # ('²'.isdigit() is true: int() would raise)
        with pytest.raises(ConfigError, match=r"^train.device: expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_under_torchrun_the_index_is_left_to_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's processes each take cuda:LOCAL_RANK (`distributed.setup`), so `cuda:1` on a process that sees
    one GPU (per-process binding) is not refused; without CUDA it still is."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:1")

