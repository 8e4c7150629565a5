"""Checkpoints: written atomically, loaded without unpickling untrusted data (no paper equation).

Layout of a run directory:
    config.json                  the RunConfig
    metrics.jsonl                one JSON object per log / eval event
    checkpoints/step_0000200/    model.safetensors, optimizer.pt, rng.pt, state.json, manifest.json
    checkpoints/latest           name of the newest complete checkpoint
A checkpoint is assembled in a hidden temporary folder and renamed into place, and `latest` is replaced
atomically after it, so a crash at any moment leaves the previous checkpoint intact. Weights are safetensors;
optimizer and RNG state go through torch.save and come back with `weights_only=True`. `manifest.json` records
each file's size and SHA-256; `verify_checkpoint` checks them before a checkpoint is used, so a file damaged on
disk after it was written (a bad sector, a partial copy between clusters) is a clear error, not a silent
divergence. Checkpoints written before manifests existed have no checksums: their weights' header and `rng.pt`
must at least read (state.json records `"manifest": true` since, so a checkpoint that lost its manifest is damaged,
not taken for an old one). A save that fails (a full
disk) removes its temporary folder and says so in one line; the next save also removes what a killed process
left (`.tmp_step_*`, `.deleting_step_*`: a pruned checkpoint is renamed out of the `step_*` names before its
files are deleted). `metrics.jsonl` is fsynced with each checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cocomix import json_text
from cocomix.atomic import atomic_write_text, fsync_dir, fsync_file, fsync_folder, ordinary_mode
from cocomix.config import RunConfig
from cocomix.config_io import run_config
from cocomix.digest import file_sha256
from cocomix.errors import CheckpointError, CheckpointWriteError, CocomixError, load_failure

CKPT_DIR = "checkpoints"
MANIFEST = "manifest.json"


def verify_checkpoint(ckpt: Path, only: tuple[str, ...] | None = None) -> None:
    """CheckpointError when a file listed in the checkpoint's manifest (of those named in `only`, where given: a
    model loaded for inference needs no optimizer state, twice the weights' size to read) is missing or differs
    from it."""
    path = ckpt / MANIFEST
    if not path.is_file():  # written before manifests existed: the files must at least read as what they are
        if _says_manifest(ckpt):  # ... unless its state.json says it had one: lost (a partial copy), so damaged
            raise CheckpointError(f"{path}: missing, though {ckpt / 'state.json'} says the checkpoint was written "
                                  "with one; its files cannot be checked (a partial copy?)")
        _readable_without_manifest(ckpt)
        return
    try:
        files = json_text.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({type(e).__name__})") from None
    if not isinstance(files, dict) or not all(isinstance(w, dict) for w in files.values()):
        raise CheckpointError(f"{path}: unreadable manifest (expected 'files' to map names to {{bytes, sha256}})")
    for name, want in files.items():
        if only is not None and name not in only:
            continue
        f = ckpt / name
        try:
            if not f.is_file():
                raise FileNotFoundError(f)
            damaged = f.stat().st_size != want.get("bytes") or file_sha256(f) != want.get("sha256")
        except FileNotFoundError:  # missing, or moved away while read (rank 0 setting a damaged checkpoint aside)
            raise CheckpointError(f"{f}: missing (listed in {MANIFEST})") from None
        if damaged:
            raise CheckpointError(f"{f}: does not match its checksum in {MANIFEST} (damaged after it was written)")


def _says_manifest(ckpt: Path) -> bool:
    """Whether the checkpoint's state.json records that a manifest was written with it (every checkpoint since
    that record exists; an unreadable state.json is the manifest-less path's to report)."""
    try:
        return json_text.loads((ckpt / "state.json").read_text()).get("manifest") is True
    except (OSError, ValueError, AttributeError):
        return False


def _readable_without_manifest(ckpt: Path) -> None:
    """CheckpointError when a checkpoint with no manifest (an old one) has weights whose safetensors header does
    not parse or an `rng.pt` that does not load: what a manifest's checksums would have caught, found without one
    so that a resume passes over it too (the optimizer state, the large file, is read when it is used)."""
    from safetensors import safe_open

    weights = ckpt / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: unreadable ({type(e).__name__}) in a checkpoint written before "
                              "manifests") from None
    rng = ckpt / "rng.pt"
    if rng.is_file():
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                torch.load(rng, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - weights_only refusals and truncations raise many types
            raise CheckpointError(f"{rng}: unreadable ({load_failure(e)}) in a checkpoint written before "
                                  "manifests") from None


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without duplicate (tied) tensors, contiguous, for safetensors."""
    return _dedup(model.state_dict())


def _dedup(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for name, t in weights.items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors into model; a missing, corrupt or mismatched file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    own = model.state_dict()
    for name, t in state.items():
        if name not in own:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} (config does not match these weights)")
        if own[name].shape != t.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"model expects {tuple(own[name].shape)}")
    result = model.load_state_dict(state, strict=False)
    tied = {n for n in result.missing_keys if n == "lm_head.weight"
            and getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings}
    missing = [n for n in result.missing_keys if n not in tied]
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}")


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module | dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | dict[str, Any], state: dict[str, Any], keep: int) -> Path:
    """Write checkpoints/step_NNNNNNN atomically, point `latest` at it and prune all but the newest `keep`.
    `model` and `optimizer` may be given as their state dicts (what `distributed.full_state` gathers)."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)  # a failed save's or an interrupted prune's (this process holds the run's lock)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f".tmp_{name}_{os.getpid()}"
    tmp.mkdir()
    try:
        _write_files(tmp, step, model, optimizer, state)
        if (run_dir / "metrics.jsonl").is_file():
            fsync_file(run_dir / "metrics.jsonl")  # the log up to this step is as durable as the checkpoint
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not stay full of a half checkpoint
        if isinstance(e, (OSError, RuntimeError, SafetensorError)):  # (ENOSPC as torch's / safetensors' writer
            kept = "the previous checkpoint is intact: " if (root / "latest").is_file() else ""  # reports it)
            raise CheckpointWriteError(f"{final}: cannot write the checkpoint ({' '.join(str(e).split())[:200]}); "
                                       f"{kept}free space and rerun with --resume") from None
        raise
    if final.exists():
        _remove(final)
    os.rename(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    steps = step_folders(root)
    for old in steps[:-keep]:
        if old != final:
            _remove(old)
    return final


def _write_files(tmp: Path, step: int, model: torch.nn.Module | dict[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer | dict[str, Any], state: dict[str, Any]) -> None:
    weights = _dedup(model) if isinstance(model, dict) else model_state(model)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(tmp / "model.safetensors", ordinary_mode())  # safetensors creates it 0600, unlike every other file
    torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # this process's device (training sets it current): every rank's advances
        rng["cuda_device"] = torch.cuda.get_rng_state()  # alike (same seed, same ops); CPU runs touch no GPU
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state, "manifest": True}, indent=2))
    files = {f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    fsync_folder(tmp)


def _remove(ckpt: Path) -> None:
    """Delete a checkpoint folder: renamed out of the `step_*` names first, so that a kill half-way through never
    leaves a `step_*` folder with some of its files (and its manifest) gone."""
    doomed = ckpt.with_name(f".deleting_{ckpt.name}")
    try:
        os.rename(ckpt, doomed)
    except OSError:  # gone already, or a leftover of that name could not be cleared: never fail a finished save
        shutil.rmtree(ckpt, ignore_errors=True)
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    for stale in [*root.glob(".tmp_step_*"), *root.glob(".deleting_step_*")]:
        shutil.rmtree(stale, ignore_errors=True)


def step_folders(root: Path) -> list[Path]:
    """The `step_N` checkpoint folders under `root`, oldest first by step number (not by name: an 8-digit step
    sorts after 9999999), without look-alikes such as a user's `step_0000004.bak` copy."""
    steps = [(int(m[1]), p) for p in root.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name)) and p.is_dir()]
    return [p for _, p in sorted(steps)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, or None when the run has none."""
    pointer = run_dir / CKPT_DIR / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip().rstrip("/")  # `step_0000004/`, as a shell completes it, names it too
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{pointer}: unreadable ({type(e).__name__}); expected a checkpoint folder "
                              "name") from None
    if not name or name in (".", "..") or Path(name).name != name:  # a path would lead out of the run
        raise CheckpointError(f"{pointer}: expected the name of a checkpoint folder beside it (step_NNNNNNN), "
                              f"got {name!r}")
    ckpt = run_dir / CKPT_DIR / name
    if not (ckpt / "state.json").is_file():
        raise CheckpointError(f"{pointer}: names {ckpt.name}, which is missing or incomplete")
    return ckpt


def read_state(ckpt: Path) -> dict[str, Any]:
    """state.json of a checkpoint; CheckpointError unless it is an object with a non-negative integer `step` (the
    one its `step_N` folder names) and its other records of the types written (a damaged or edited file)."""
    path = ckpt / "state.json"
    try:
        state = json_text.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointError(f"{path}: expected a JSON object with a non-negative integer 'step'")
    named = re.fullmatch(r"step_(\d+)", ckpt.name)
    if named and int(named[1]) != state["step"]:
        raise CheckpointError(f"{path}: holds step {state['step']}, but its folder is {ckpt.name}; the checkpoint "
                              "is damaged or was moved")
    for key, kinds in _STATE_TYPES.items():
        value = state.get(key)
        negative = key not in ("train_loss", "val_loss") and isinstance(value, (int, float)) and value < 0
        typed = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))  # (a loss: <0, NaN)
        if key in state and (not typed or negative or (key == "log_interval" and not _interval_state(value))):
            raise CheckpointError(f"{path}: {key} is {value!r}, not what a checkpoint records; the checkpoint is "
                                  "damaged")
    return state


def _interval_state(value: Any) -> bool:
    """Whether `value` is what `IntervalMeans.state` writes (or None): a count and the sums of numbers."""
    if value is None:
        return True
    count, sums = value.get("count"), value.get("sums")
    return (isinstance(count, int) and not isinstance(count, bool) and count >= 0 and isinstance(sums, dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sums.values()))


# the types of what `save_checkpoint`'s callers record in state.json (None: not known, e.g. no evaluation yet)
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("train_loss", "val_loss"), (int, float, type(None))),
    **dict.fromkeys(("tokens", "global_batch", "world_size", "skipped_steps", "bad_steps_in_a_row"), (int,)),
    "cpu_threads": (int, type(None)), "train_s": (int, float), "log_interval": (dict, type(None)),
    "store": (dict, type(None)), "inputs": (dict,), "manifest": (bool,), "split": (list,), "compile": (bool,),
    "device_type": (str,),
}


def load_training_state(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from a checkpoint; returns its state.json."""
    verify_checkpoint(ckpt)
    state = read_state(ckpt)
    load_model_weights(model, ckpt / "model.safetensors")
    load_optimizer_and_rng(ckpt, optimizer.load_state_dict)
    return state


def load_optimizer_and_rng(ckpt: Path, load_optimizer: Callable[[dict[str, Any]], None], mmap: bool = False) -> None:
    """Restore the RNG and hand the optimizer state (single-process format) to `load_optimizer`. `mmap`: the
    optimizer file is memory-mapped rather than read (for a loader that copies what it keeps)."""
    for name in ("optimizer.pt", "rng.pt"):
        try:
            mapped = mmap and name == "optimizer.pt"
            with warnings.catch_warnings():  # torch's note on a newer pickle protocol: the load answers for it
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = torch.load(ckpt / name, weights_only=True, map_location="cpu", mmap=mapped)
            if name == "optimizer.pt":
                if mapped:  # the step counts, which optimizers keep as they are given, in memory of their own
                    loaded = {**loaded, "state": {i: {k: v.clone() if torch.is_tensor(v) and v.dim() == 0 else v
                                                      for k, v in s.items()} for i, s in loaded["state"].items()}}
                load_optimizer(loaded)
            else:
                torch.set_rng_state(loaded["cpu"])
                if "cuda_device" in loaded and torch.cuda.is_initialized():  # onto this rank's own device
                    torch.cuda.set_rng_state(loaded["cuda_device"])
                elif "cuda" in loaded and torch.cuda.is_initialized():  # older checkpoints: every device's state
                    torch.cuda.set_rng_state_all(loaded["cuda"])
        except Exception as e:  # a corrupt file can fail in many ways (unpickling, EOF, wrong keys/types)
            raise CheckpointError(f"{ckpt / name}: unreadable or not a cocomix checkpoint file "
                                  f"({type(e).__name__}: {load_failure(e)})") from None


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a run trained with (its config.json); CheckpointError naming the file when it is not one."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json)")
    try:
        data = json_text.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "auxk_alpha" in data and "model" not in data:
        raise CheckpointError(f"{run_dir}: a train-sae output (its SAE is {run_dir / 'sae'}), not a model run")
    missing = ([k for k in ("method", "model", "data", "train") if not isinstance(data.get(k), str if k == "method"
                else dict)] if isinstance(data, dict) else [])  # (a null section would be read as its defaults)
    if missing:  # every run writes them all: defaults in their place would build another model than the weights'
        raise CheckpointError(f"{path}: no {', '.join(missing)} section; the run wrote every section, so the file "
                              "was damaged or edited (restore it)")
    try:
        return run_config(data)
    except CocomixError as e:
        raise CheckpointError(f"{path}: {e}") from None


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint dir) from a run directory (its latest checkpoint; so do its `checkpoints/` folder and
    `latest` pointer) or a checkpoint directory."""
    p = Path(path)
    if (p / "state.json").is_file() and p.parent.name == CKPT_DIR:
        return p.parent.parent, p
    if p.is_file() and p.name == "latest" and p.parent.name == CKPT_DIR:  # the pointer: the checkpoint it names
        return resolve_checkpoint(p.parent.parent)
    if p.name == CKPT_DIR and (p / "latest").is_file():  # the run's checkpoints/ folder: its latest checkpoint
        return resolve_checkpoint(p.parent)
    if p.is_file():  # a run's config.json, a checkpoint's weights: its folder was meant
        raise CheckpointError(f"{p}: a file; give a run directory or one of its checkpoints (e.g. {p.parent})")
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such run or checkpoint directory")
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
            raise CheckpointError(f"{p}: a transformers model folder (cocomix export), not a cocomix run; give the "
                                  "run directory it was exported from, or load it with transformers")
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p}: not a cocomix run (no config.json or checkpoints/); give a run directory "
                                  "or one of its checkpoints")
        steps = [q.name for q in step_folders(p / CKPT_DIR) if (q / "state.json").is_file()]
        if steps:  # `latest` lost (a crash between a checkpoint's rename and its pointer, a deleted file)
            raise CheckpointError(f"{p}: {CKPT_DIR}/latest is missing, so which checkpoint is the run's is not "
                                  f"said; give one ({p / CKPT_DIR / steps[-1]}), or `cocomix train --resume` "
                                  "restores the pointer")
        raise CheckpointError(f"{p}: run has no checkpoint yet")
    return p, ckpt
