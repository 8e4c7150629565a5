"""Resuming a run: which checkpoint to start from, which config changes a resume accepts, and whether the token
store, teacher and SAE are still the ones the run was trained on, by content (exact resume: a resumed run equals
an uninterrupted one on CPU); a deliberate change (a lower learning rate after a divergence) is recorded by step.

No paper equation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from cocomix.atomic import atomic_write_text, check_out_folder
from cocomix.config import RunConfig
from cocomix.data import TokenStore
from cocomix.errors import CheckpointError, CocomixError, DataError
from cocomix.outputs import RUN, output_kind
from cocomix.train.checkpoint import (
    CKPT_DIR,
    latest_checkpoint,
    read_run_config,
    read_state,
    step_folders,
    verify_checkpoint,
)
from cocomix.train.metrics import RUN_LOGS

# may change on resume as long as micro_batch_size · grad_accum · world size (the global batch) stays the same
_RESHARDABLE = ("train.micro_batch_size", "train.grad_accum", "train.parallel")
# settings a resume may change because the weights do not depend on them (up to the device's rounding)
_OPERATIONAL = ("train.device", "train.compile", "train.activation_checkpointing", "train.chunked_lm_loss",
                "train.keep_checkpoints",
                "train.log_backends", "train.log_every", "train.eval_every", "train.eval_batches",
                "train.save_every")
# settings a resume may change on purpose (after a divergence: rewind to the last good checkpoint with a lower
# learning rate or tighter clipping; FSDP's compute precision, which a run moved to DDP or one process must set to
# float32); the change is printed, and the run no longer equals an uninterrupted one
_ADJUSTABLE = ("train.lr", "train.min_lr_ratio", "train.grad_clip", "train.max_bad_steps", "train.fsdp_param_dtype")
# paths a resume may change (files moved to node-local scratch, another machine) because their content is checked:
# the token store against the identity each checkpoint records, a target cache against the run's settings
_RELOCATABLE = ("data.path", "concept.cache")
# paths a resume may change when the checkpoint recorded their content (`Method.input_fingerprints`: a teacher's
# weights, an SAE's hash), checked by `check_same_inputs` once the method has loaded them
_RELOCATABLE_BY_CONTENT = ("concept.teacher", "concept.sae")
# settings that do not shape a run's result (beyond the device's rounding): seeds that `compare` groups may
# differ in these (and in train.seed) only
RESULT_NEUTRAL = _RESHARDABLE + _OPERATIONAL + _RELOCATABLE


def check_run_folder(run_dir: Path) -> None:
    """CocomixError for an --out that is a file, or a folder that holds another kind of output (a checkpoint, a
    token store, an SAE, a concept cache): a run is never written into it. Anything else a job may put there
    first (its scheduler's log, a `tee` file) is fine, except the names of a run's own logs (RUN_LOGS) in a folder
    that holds no run yet: a run starting from step 0 clears those. Cheap; called before the run is locked."""
    check_out_folder(run_dir)
    kind = output_kind(run_dir)
    if kind not in (None, RUN):
        raise CocomixError(f"{run_dir}: holds {kind}, not a cocomix run; choose a new or empty --out")
    ckpts = run_dir / CKPT_DIR
    if ckpts.exists() and not ckpts.is_dir():  # found before the run writes anything, not at its first save
        raise CocomixError(f"{ckpts}: not a folder, but the run keeps its checkpoints there; move it away")
    # no run here (checkpoints without config.json are prepare_run_dir's error): logs a fresh run would clear are
    # someone else's
    if not (run_dir / "config.json").exists() and not ckpts.exists():
        for name in RUN_LOGS:
            if (run_dir / name).exists() or (run_dir / name).is_symlink():
                raise CocomixError(f"{run_dir / name}: a new run writes its own there, and this folder holds no "
                                   "cocomix run; move it away or choose another --out")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run saved a checkpoint (a first one cut off while written is only a `.tmp_` folder)."""
    ckpts = run_dir / CKPT_DIR
    return ckpts.is_dir() and any(not p.name.startswith(".tmp_") for p in ckpts.iterdir())


def undo_unsaved_start(run_dir: Path, before: set[str]) -> None:
    """After a fresh run failed on bad input (a token id out of the vocabulary in a chunk first read at step N, a
    damaged target cache: a DataError or CheckpointError, not a divergence) before its first checkpoint: remove
    what it wrote into `run_dir` (the entries not in `before`: config.json, metrics.jsonl, log folders), so that
    the same command, once the input is fixed, starts again instead of being told the folder holds a run. A run
    that saved a checkpoint is left as it is, and so is one whose first checkpoint could not be written (a
    `CheckpointWriteError`: the caller does not call this)."""
    import shutil

    if has_checkpoint(run_dir):
        return
    for path in run_dir.iterdir():
        if path.name not in before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def prepare_run_dir(run: RunConfig, run_dir: Path, resume: bool, world_size: int = 1,
                    from_rank0: Callable[[int], int] | None = None, notes: list[str] | None = None,
                    device_type: str | None = None) -> Path | None:
    """Create/validate the run directory; returns the checkpoint to resume from (None for a fresh run). `notes`
    receives the note of a resume that starts from step 0 (for the caller to print once the run has set up).
    `device_type` (cpu, cuda) is the one this process trains on, compared with the checkpoint's.
    Under torchrun `from_rank0` broadcasts rank 0's integer to every rank (a collective): rank 0 alone hashes the
    checkpoints against their manifests and the others take the step it chose, instead of every rank reading and
    hashing the whole checkpoint again."""
    check_run_folder(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CocomixError(f"{run_dir}: cannot create out_dir ({e.strerror})") from None
    if not os.access(run_dir, os.W_OK):
        raise CocomixError(f"{run_dir}: out_dir is not writable")
    has_config = (run_dir / "config.json").is_file()
    # a run killed or failed before its first checkpoint left its config.json (and metrics) but nothing to continue
    never_saved = has_config and not has_checkpoint(run_dir)
    if not resume:
        if never_saved:
            raise CocomixError(f"{run_dir}: already holds a run, which never reached a checkpoint; pass --resume to "
                               "start it again (with this config) or choose another --out")
        if has_config or (run_dir / CKPT_DIR / "latest").exists():
            raise CocomixError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another "
                               "--out")
        return None
    main = os.environ.get("RANK", "0") == "0"
    ckpt = usable_checkpoint(run_dir) if main or from_rank0 is None else None
    if from_rank0 is not None:
        step = -1 if ckpt is None else read_state(ckpt)["step"]  # -1: no checkpoint to resume from
        if ckpt is not None and ckpt.name != f"step_{step:07d}":  # the other ranks find it by its step
            raise CheckpointError(f"{ckpt}: holds step {step}, so under torchrun it must be named "
                                  f"step_{step:07d}; rename it (and `latest`)")
        step = from_rank0(step)
        ckpt = None if step < 0 else run_dir / CKPT_DIR / f"step_{step:07d}"
        if ckpt is not None and not (ckpt / "state.json").is_file():
            raise CheckpointError(f"{run_dir}: rank 0 resumes from {ckpt.name}, which this rank does not find; "
                                  "every node must see the same run directory (a shared filesystem)")
    if ckpt is not None and not has_config:
        raise CheckpointError(f"{run_dir}: holds checkpoints but no config.json, so nothing says they belong to "
                              "this config; restore the run's config.json (or start in another --out)")
    if has_config:
        stored = read_run_config(run_dir)
        old, new = flatten(stored.to_dict()), flatten(run.to_dict())
        changed = [k for k, v in new.items() if old.get(k) != v]
        recorded = (read_state(ckpt).get("inputs") or {}) if ckpt is not None else {}
        moved = [k for k in changed if (k in _RELOCATABLE or (k in _RELOCATABLE_BY_CONTENT and k in recorded))
                 and old.get(k) and new.get(k)]  # (not on <-> off)
        adjusted = [k for k in changed if k in _ADJUSTABLE]
        from cocomix.methods import unread_concept_settings

        unread = tuple(unread_concept_settings(run.method, changed))  # (changing one changes nothing)
        diff = [k for k in changed if k not in _RESHARDABLE + _OPERATIONAL + _ADJUSTABLE + tuple(moved) + unread]
        if never_saved and ckpt is None:  # nothing to continue: the run starts again, with the config given now
            if notes is not None:
                shown = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
                notes.append(f"cocomix: note: no checkpoint yet in {run_dir}; starting the run from step 0" + (
                    f" with the config given now ({shown}{' and more' if len(changed) > 3 else ''})"
                    if changed else ""))
            return None
        if diff:
            shown = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
            longer = ("; train.steps also sets the learning-rate schedule, so a run with other steps is a new run "
                      f"(--config {run_dir} --set train.steps=N --out NEW" + (
                          f"; it takes the settings in force at the run's end, see {ADJUSTED}"
                          if (run_dir / ADJUSTED).is_file() else "") + ")" if "train.steps" in diff else "")
            raise CheckpointError(f"{run_dir}: cannot resume, the config differs from the stored one: {shown}"
                                  f"{' (and more)' if len(diff) > 3 else ''}{longer}")
        if "data.path" in moved and ckpt is not None and "train_sampled_sha256" not in (
                read_state(ckpt).get("store") or {}):
            raise CheckpointError(f"{run_dir}: data.path moved ({old['data.path']!r} -> {new['data.path']!r}), but "
                                  f"{ckpt.name} predates the store's content digest, so the move cannot be checked; "
                                  "point data.path at the store the run was trained on")
        if adjusted and ckpt is not None and read_state(ckpt)["step"] >= run.train.steps:
            raise CheckpointError(f"{run_dir}: the run is finished (step {read_state(ckpt)['step']}); "
                                  f"{', '.join(adjusted)} would change nothing but its recorded config")
        if adjusted and os.environ.get("RANK", "0") == "0":
            shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in adjusted)
            print(f"cocomix: note: resuming with {shown}; from here the run differs from an uninterrupted one",
                  file=sys.stderr)
        if ckpt is not None:
            state = read_state(ckpt)
            saved = state.get("global_batch", stored.train.micro_batch_size * stored.train.grad_accum)
            now = run.train.micro_batch_size * run.train.grad_accum * world_size
            if saved != now:
                raise CheckpointError(
                    f"{run_dir}: cannot resume with a global batch of {now} windows (micro_batch_size "
                    f"{run.train.micro_batch_size} × grad_accum {run.train.grad_accum} × {world_size} processes); "
                    f"the run was saved with {saved} — change train.micro_batch_size or train.grad_accum to match")
            if os.environ.get("RANK", "0") == "0":
                for note in resume_notes(run, stored, state, world_size, device_type, ckpt):
                    print(note, file=sys.stderr)
    return ckpt


def resume_notes(run: RunConfig, stored: RunConfig, state: dict, world_size: int, device_type: str | None,
                 ckpt: Path) -> list[str]:
    """What a resume from `ckpt` (its state.json `state`; `stored`: the run's config.json) with `run` changes
    that the weights depend on beyond a setting's own effect, said as notes: another split of the global batch,
    train.compile or device under dropout draw other masks, another device type rounds otherwise. The split, the
    compile flag and the device the checkpoint was trained with are read from its state.json (config.json holds
    the last attempt's, which may have stopped before it saved), from config.json for older checkpoints."""
    notes, tc, dropout = [], run.train, run.model.dropout
    split = (*state.get("split", (stored.train.micro_batch_size, stored.train.grad_accum)),
             state.get("world_size", 1))
    if dropout > 0 and tuple(split) != (tc.micro_batch_size, tc.grad_accum, world_size):
        notes.append(f"cocomix: note: resuming with another split of the global batch (micro-batch × accumulation "
                     f"× processes {split[0]} × {split[1]} × {split[2]} -> {tc.micro_batch_size} × {tc.grad_accum} "
                     f"× {world_size}) and model.dropout {dropout}: dropout masks follow the micro-batches, so the "
                     "run continues on another random path than an uninterrupted one (same data, same "
                     "expectation; equal only without dropout)")
    compiled = state.get("compile", stored.train.compile)
    if dropout > 0 and compiled != tc.compile:
        notes.append(f"cocomix: note: resuming with train.compile {compiled} -> {tc.compile} and model.dropout "
                     f"{dropout}: compiled and eager code draw other dropout masks from the same seed, so the run "
                     "continues on another random path than an uninterrupted one")
    saved_on = state.get("device_type")
    if device_type is not None and saved_on is not None and saved_on != device_type:
        notes.append(f"cocomix: note: resuming on {device_type} where {ckpt} was written on {saved_on}: another "
                     "device rounds otherwise (and precision=auto means bf16 autocast on a GPU, fp32 on a CPU)"
                     + (" and draws other dropout masks" if dropout > 0 else "")
                     + ", so the run equals an uninterrupted one only up to that")
    return notes


ADJUSTED = "adjusted.jsonl"
"""In a run directory: one line per resume that changed a `_ADJUSTABLE` setting, {"step": N, key: [old, new]}."""


def record_adjustments(run_dir: Path, run: RunConfig, step: int | None) -> None:
    """Before a resumed run's config.json is replaced by `run`: append to ADJUSTED the adjustable settings that
    change from step `step` on, so that the run's history survives (config.json holds the values in force at its
    end; `--config RUN` reads those, and warns that the run trained otherwise before)."""
    import json

    if step is None or not (run_dir / "config.json").is_file():
        return
    old, new = flatten(read_run_config(run_dir).to_dict()), flatten(run.to_dict())
    changed = {k: [old.get(k), new[k]] for k in _ADJUSTABLE if old.get(k) != new.get(k)}
    if changed:
        path = run_dir / ADJUSTED
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        atomic_write_text(path, before + json.dumps({"step": step, **changed}) + "\n")


def usable_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume starts from: the one `latest` names when it verifies against its manifest, else
    (with a note) the newest other checkpoint that does — also when `latest` is missing (a crash between the first
    checkpoint's rename and its pointer); CheckpointError when checkpoints exist and none verifies. Every damaged
    checkpoint passed over is named in the note and renamed `.damaged_step_…` (kept for inspection, out of the
    `keep_checkpoints` count; numbered `.2`, `.3`, … when an earlier resume took the name), and `latest` is made
    to name the checkpoint chosen."""
    root = run_dir / CKPT_DIR
    damaged: CheckpointError | None = None
    try:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            verify_checkpoint(ckpt)
            read_state(ckpt)
            return ckpt
    except CheckpointError as e:
        damaged = e
    bad = (root / "latest").read_text(errors="replace").strip().rstrip("/") if (root / "latest").is_file() else ""
    main = os.environ.get("RANK", "0") == "0"
    failures: list[tuple[str, str]] = []  # (folder name, why) of the newer checkpoints that do not verify either
    for older in reversed(step_folders(root)):  # newest first
        if older.name == bad or not (older / "state.json").is_file():
            continue
        try:
            verify_checkpoint(older)
            read_state(older)
        except CheckpointError as e:
            failures.append((older.name, " ".join(str(e).split())))
            continue
        if main:
            why = " ".join(str(damaged).split()) if damaged else f"{root / 'latest'} is missing"
            if damaged and bad not in ("", ".", "..") and Path(bad).name == bad and (root / bad).is_dir():
                why += _set_aside(root, bad)
            for name, reason in failures:  # every damaged checkpoint passed over is said and kept aside
                why += f"; {reason}{_set_aside(root, name)}"
            atomic_write_text(root / "latest", older.name + "\n")  # eval, generate, export read it too
            print(f"cocomix: note: {why}; resuming from {older} instead ({root / 'latest'} now names it)",
                  file=sys.stderr)
        return older
    if damaged is not None:
        raise CheckpointError(f"{damaged}; and no earlier checkpoint in {root} verifies") from None
    if failures:  # checkpoints, none usable, and no pointer: not a fresh start
        raise CheckpointError(f"{root}: no checkpoint verifies ({failures[0][1]})")
    return None


def _set_aside(root: Path, name: str) -> str:
    """Rename the damaged checkpoint `root/name` to `.damaged_name` (`.damaged_name.2`, … when an earlier resume
    took that name), out of the `step_*` names and kept for inspection; the words that say where it went."""
    n = 1
    while True:
        aside = root / (f".damaged_{name}" + (f".{n}" if n > 1 else ""))
        if not aside.exists():
            break
        n += 1
    try:
        (root / name).rename(aside)
    except OSError as e:
        return f" (left in place: cannot rename it to {aside.name}: {e.strerror or e})"
    return f" (kept as {aside})"


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config dict as {"section.key": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def store_identity(store: TokenStore) -> dict[str, object]:
    """What a resume must find unchanged in the token store: its split sizes, tokenizer and a sampled digest of
    each split's ids (a store re-prepared from other text, or the same text in another order, differs)."""
    from cocomix.digest import file_sha256, sampled_sha256

    return {"train_tokens": store.num_tokens("train"), "val_tokens": store.num_tokens("val"),
            "tokenizer_sha256": file_sha256(store.path / "tokenizer" / "tokenizer.json"),
            **{f"{split}_sampled_sha256": sampled_sha256(store.path / f"{split}.bin") for split in ("train", "val")}}


def check_same_inputs(state: dict, now: dict[str, str], run: RunConfig, ckpt: Path) -> None:
    """CheckpointError when a teacher or SAE the checkpoint recorded (`Method.input_fingerprints`) is not what the
    config names now: a path moved to other weights, or another path given on resume that holds other files."""
    from cocomix.concepts.identity import same_sae

    for key, value in (state.get("inputs") or {}).items():
        if now.get(key) != value and not (key == "concept.sae" and now.get(key) and isinstance(value, str)
                                          and same_sae(value, run.concept.sae, run.concept.teacher_layer)):
            section, _, field = key.partition(".")
            path = getattr(getattr(run, section), field)
            why = (f"holds another {field} than the one {ckpt} was trained with (its content differs from what "
                   "the checkpoint recorded)" if now.get(key) else
                   f"is no local {field} from here, but {ckpt} recorded the weights of a local one")
            raise CheckpointError(f"{key}: {path!r} {why}; point {key} at the {field} the run was trained with")


def check_same_store(state: dict, now: dict[str, object], store: TokenStore, ckpt: Path) -> None:
    saved = state.get("store")
    if saved is None:  # a checkpoint written before stores were recorded
        return
    for key, value in saved.items():  # (keys a checkpoint predates are not compared)
        if now.get(key) != value:
            raise DataError(f"{store.path}: the token store changed since {ckpt} was written ({key} {value!r} -> "
                            f"{now.get(key)!r}); a resume would read other windows: point data.path at the store "
                            "the run was trained on")
