"""The concept-target cache: teacher + SAE run once over a token store, targets read back per training window
(the targets of paper Eq. 1-2, as `concepts/attribution.py` selects them).

`extract_concepts` writes, for each split, `targets_{split}.bin`: for every window c (the store's fixed chunk of
`seq_len` tokens) the `k_attr` target latent ids of positions 0 … T−2, as uint16 when the SAE has at most 65536
latents (int32 otherwise). The final position has no next token and is not stored; `TargetCache.batch` returns
it as -1 (invalid), exactly like `compute_targets`. Windows are processed in order and `progress.json` records
how many are done after each flushed batch, so an interrupted extraction resumes where it stopped. The directory
is locked while extracting (a second writer fails at once); SIGTERM / SIGINT stop after the current batch is on
disk (`cocomix.errors.Stopped`).
`meta.json` records what produced the targets (teacher, layer, SAE, selection, k_attr, seq_len, the store's
tokenizer, token counts and a sampled digest of each split's ids); opening the cache with different expectations
is a one-line error, as is reading a targets file of the wrong size or holding ids outside the SAE. It also lists
the splits whose targets are all written (`complete_splits`); `complete` means the train split is (what training
reads), and reading a split that is not complete is an error, never the zero-filled rest of its file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cocomix import json_text
from cocomix.atomic import atomic_write_text, check_out_folder, reserve_file
from cocomix.concepts.attribution import INVALID, check_target_options, compute_targets
from cocomix.concepts.identity import sae_sha256, same_sae, teacher_fingerprint
from cocomix.data import TokenStore
from cocomix.errors import CheckpointError, ConfigError, DataError, Stopped
from cocomix.lm_shape import LMShape, shape_record
from cocomix.progress import ProgressLine
from cocomix.sae.fit import check_sae_fit
from cocomix.teacher_precision import cuda_matmul_precision
from cocomix.train import distributed as dd
from cocomix.train.distributed import DistContext
from cocomix.train.guard import RunLock, StopSignals
from cocomix.train.resume import store_identity

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher

FORMAT_VERSION = 1
SPLITS = ("train", "val")
MATCH_KEYS = ("teacher", "teacher_fingerprint", "teacher_layer", "teacher_dtype", "sae", "sae_sha256", "n_latents",
              "sae_k", "k_attr", "selection", "multiplier", "attribution_loss", "gradient_at", "seq_len",
              "tokenizer_sha256", "train_tokens", "val_tokens", "train_sampled_sha256", "val_sampled_sha256")
# keys caches written before they were recorded hold implicitly
_OLD_DEFAULTS = {"teacher_dtype": "float32", "gradient_at": "residual"}
_NOT_RECORDED_BEFORE = ("train_sampled_sha256", "val_sampled_sha256")  # not compared for caches predating them


def _shape(teacher: Teacher) -> dict[str, Any]:
    """The teacher's `cocomix.lm_shape.LMShape` as JSON: matmul weights per block, width, output vocabulary (and a
    cocomix run's seam)."""
    return LMShape.of_teacher(teacher).to_json()


def _dtype(n_latents: int) -> np.dtype:
    return np.dtype(np.uint16) if n_latents <= 65536 else np.dtype(np.int32)


def check_extract_args(splits: tuple[str, ...], batch_size: int) -> None:
    """ConfigError for `splits` other than distinct names among SPLITS, or a batch size below 1 (checked before
    the teacher and SAE load too)."""
    if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
        raise ConfigError(f"splits: expected distinct names among {', '.join(SPLITS)}, got {','.join(splits)!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size!r}")


def extract_concepts(store_path: str | Path, out_dir: str | Path, teacher: Teacher, sae: TopKSAE, *, teacher_spec: str,
                     sae_spec: str, k_attr: int = 4, selection: str = "attribution", multiplier: str = "activation",
                     attribution_loss: str = "window_mean", gradient_at: str = "residual", seq_len: int = 1024,
                     batch_size: int = 8, splits: tuple[str, ...] = SPLITS, max_windows: int | None = None,
                     progress: bool = True, ctx: DistContext | None = None) -> dict[str, Any]:
    """Compute and store targets for every window of `splits`; resume an interrupted run of the same settings.

    `max_windows` stops after that many windows in total (for testing interruption). Returns meta.json's dict.
    Under torchrun (`ctx`: every rank calls this, the teacher and SAE on its own device) the ranks share each
    round of windows and rank 0 writes: the file one process with the same batch size writes.
    """
    ctx = ctx or DistContext()
    check_extract_args(splits, batch_size)
    check_target_options(sae, k_attr, selection, multiplier, attribution_loss, gradient_at)
    _check_out(Path(out_dir))
    store = TokenStore.open(store_path)
    teacher.check_store(store, seq_len)
    if sae.d_in != teacher.width:
        raise ConfigError(f"--sae: reads {sae.d_in}-wide activations, the teacher's residual width at teacher_layer "
                          f"{teacher.layer} is {teacher.width} (give the SAE trained on this teacher)")
    # train's first window, whichever splits are asked for (what training decides on), so that every call and every
    # online run take the same gradient path
    first = next((s for s in ("train", *splits) if store.num_chunks(s, seq_len) > 0), None)
    if first is not None:
        window = store.batch(first, [0], seq_len).to(teacher.device)  # (1, T)
        check_sae_fit(teacher, sae, window, "--sae")
        if selection == "attribution" and attribution_loss == "next_token":  # decided on a fixed window, up front
            teacher.decide_next_token(window, gradient_at)
    out = Path(out_dir)
    created = not out.exists()  # removed again if extraction fails before writing anything into it
    lock = None

    def take_lock() -> list[int]:  # rank 0 alone writes the cache (the other ranks send it their targets)
        nonlocal lock
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)  # one writer per cache directory
        return []

    try:
        dd.on_main_rank(take_lock, 0, ctx, teacher.device)
        with StopSignals() as signals:
            return _extract(store, out, teacher, sae, signals, ctx, teacher_spec=teacher_spec, sae_spec=sae_spec,
                            k_attr=k_attr, selection=selection, multiplier=multiplier,
                            attribution_loss=attribution_loss, gradient_at=gradient_at, seq_len=seq_len,
                            batch_size=batch_size, splits=splits,
                            max_windows=max_windows, progress=progress)
    finally:
        if lock is not None:
            lock.release(remove_empty_dir=created)


def _meta(store: TokenStore, teacher: Teacher, sae: TopKSAE, main: bool, *, teacher_spec: str, sae_spec: str,
          k_attr: int, selection: str, multiplier: str, attribution_loss: str, gradient_at: str,
          seq_len: int) -> dict[str, Any]:
    """What meta.json records; the content hashes on the main rank only (the others never write or compare it)."""
    return {
        "format_version": FORMAT_VERSION, "teacher": teacher_spec, "teacher_fingerprint":
        teacher_fingerprint(teacher_spec) if main else None, "teacher_layer": teacher.layer,
        "teacher_dtype": teacher.dtype_name,
        "sae": sae_spec, "sae_sha256": sae_sha256(sae_spec, teacher.layer) if main else None,
        "n_latents": sae.n_latents, "sae_k": sae.k, "k_attr": k_attr, "selection": selection, "multiplier": multiplier,
        "attribution_loss": attribution_loss, "gradient_at": gradient_at, "seq_len": seq_len,
        **store_identity(store),  # tokenizer, token counts and a sampled digest of each split's ids
        "dtype": _dtype(sae.n_latents).name, "store": str(store.path),
        "teacher_shape": _shape(teacher),  # for the FLOPs count of runs that read the cache (never load the teacher)
        "windows": {s: store.num_chunks(s, seq_len) for s in SPLITS},
    }


def _start(out: Path, meta: dict[str, Any]) -> dict[str, int]:
    """(Main rank) the windows already done per split: resumed from progress.json after checking meta.json
    matches, or a fresh start with meta.json written."""
    prog_path = out / "progress.json"
    saved = _read_cache_json(prog_path) if prog_path.is_file() else {}
    done = {s: saved.get(s, 0) for s in SPLITS}  # windows finished per split
    if not all(type(n) is int and n >= 0 for n in done.values()):
        raise CheckpointError(f"{prog_path}: expected each split's count of finished windows, got {saved!r}; "
                              "delete the cache folder to extract again")
    if (out / "meta.json").is_file() and any(done.values()):
        stored = _read_cache_meta(out)
        _check_matches(out, stored, meta)
        # what made the targets stays as recorded (a teacher or SAE matched by content at another path, keys an
        # older cache lacks): runs trained from the cache recorded its `fingerprint`, which must not change
        for key in MATCH_KEYS:
            if key in stored:
                meta[key] = stored[key]
            else:
                meta.pop(key, None)
        for split in SPLITS:  # the windows progress.json counts as done must be on disk, whole
            path, n = out / f"targets_{split}.bin", meta["windows"][split]
            size = n * (meta["seq_len"] - 1) * meta["k_attr"] * np.dtype(meta["dtype"]).itemsize
            if done[split] and not (path.is_file() and path.stat().st_size == size):
                raise CheckpointError(f"{path}: progress.json counts {done[split]} {split} windows done, but the "
                                      "file is " + ("missing" if not path.is_file() else "not of the cache's size")
                                      + "; delete the cache folder to extract again")
    else:  # a new cache, or one whose first call stopped before any window was written: (re)start it
        for split in SPLITS:
            (out / f"targets_{split}.bin").unlink(missing_ok=True)
        prog_path.unlink(missing_ok=True)  # (counts of a cache whose meta.json is gone describe nothing now)
        done = dict.fromkeys(SPLITS, 0)
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    return done


def _extract(store: TokenStore, out: Path, teacher: Teacher, sae: TopKSAE, signals: StopSignals, ctx: DistContext, *,
             teacher_spec: str, sae_spec: str, k_attr: int, selection: str, multiplier: str, attribution_loss: str,
             gradient_at: str, seq_len: int, batch_size: int, splits: tuple[str, ...], max_windows: int | None,
             progress: bool) -> dict[str, Any]:
    """Targets in rounds of world_size · batch_size windows in order: rank r computes the round's r-th batch (the
    batches one process would run), rank 0 writes them all and then the round's progress."""
    device = teacher.device
    cuda_matmul_precision(device)  # TF32 on CUDA, as in training: cached targets = online targets
    meta = _meta(store, teacher, sae, ctx.is_main, teacher_spec=teacher_spec, sae_spec=sae_spec, k_attr=k_attr,
                 selection=selection, multiplier=multiplier, attribution_loss=attribution_loss,
                 gradient_at=gradient_at, seq_len=seq_len)
    done = dict(zip(SPLITS, dd.on_main_rank(lambda: list(_start(out, meta).values()), len(SPLITS), ctx, device),
                    strict=True))
    dtype = _dtype(sae.n_latents)
    budget = max_windows if max_windows is not None else float("inf")
    for split in splits:
        n = meta["windows"][split]
        if n == 0:
            continue
        path = out / f"targets_{split}.bin"
        shape = (n, seq_len - 1, k_attr)
        if ctx.is_main:
            reserve_file(path, math.prod(shape) * np.dtype(dtype).itemsize)
        mm = np.memmap(path, dtype=dtype, mode="r+", shape=shape) if ctx.is_main else None
        start = done[split]
        line = ProgressLine(f"extract-concepts {split}", n, start=start, enabled=progress and ctx.is_main)
        while start < n and budget > 0:
            stop = int(min(n, start + ctx.world_size * batch_size, start + budget))
            mine = range(min(stop, start + ctx.rank * batch_size), min(stop, start + (ctx.rank + 1) * batch_size))
            if len(mine):
                ids = store.batch(split, list(mine), seq_len).to(device)
                targets = compute_targets(teacher, sae, ids, k_attr=k_attr, selection=selection,
                                          multiplier=multiplier, attribution_loss=attribution_loss,
                                          gradient_at=gradient_at)[:, :-1]  # (b, T − 1, k_attr)
            else:  # the round's last windows went to lower ranks
                targets = torch.empty(0, seq_len - 1, k_attr, dtype=torch.long, device=device)
            parts = dd.gather_rows(targets, batch_size, ctx)  # on every rank; rank 0 writes
            if mm is not None:
                mm[start:stop] = torch.cat(parts).cpu().numpy().astype(dtype)
                mm.flush()
            budget -= stop - start
            start = done[split] = stop
            if ctx.is_main:
                atomic_write_text(out / "progress.json", json.dumps(done))
            signum = dd.max_over_ranks(signals.received or 0, ctx, device)  # any rank's SIGTERM / SIGINT stops all
            if signum:  # this round is on disk; stop here
                line.close()
                dd.barrier(ctx)  # the other ranks leave once rank 0 has written the progress
                raise Stopped(signum, f"{start}/{n} {split} windows saved in {out}; rerun the same "
                                      "command to resume")
            line.update(start)
        line.close()
        del mm
    # per split, not per call: a later `--splits val` must not vouch for train targets an earlier call left
    # half-written (their file exists full-size, zero-filled past the progress mark)
    meta["complete_splits"] = [s for s in SPLITS if done.get(s, 0) >= meta["windows"][s]]
    meta["complete"] = "train" in meta["complete_splits"]  # what training from the cache reads
    meta["splits"] = list(splits)
    if ctx.is_main:
        atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    dd.barrier(ctx)
    return meta


# what an output folder of extract-concepts holds (besides files being written atomically: dot-prefixed)
_CACHE_FILES = ("meta.json", "progress.json", "targets_train.bin", "targets_val.bin")


def _check_out(out: Path) -> None:
    """ConfigError, before any work, for an --out that is a file or a folder holding something else."""
    check_out_folder(out)
    if out.is_dir() and (out / "meta.json").is_file():
        _read_cache_meta(out)
    elif out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in _CACHE_FILES and not p.name.startswith("."))
        if other:
            raise ConfigError(f"--out {out}: holds {other[0]!r} and no concept cache; choose a new or empty folder")


def _read_cache_meta(out: Path) -> dict[str, Any]:
    """The cache's meta.json; ConfigError for the meta.json of something else (a token store's)."""
    stored = _read_cache_json(out / "meta.json")
    if "k_attr" not in stored or "windows" not in stored:
        raise ConfigError(f"--out {out}: its meta.json is not a concept cache's (a token store, or another "
                          "command's output?); choose another --out")
    return stored


def _read_cache_json(path: Path) -> dict[str, Any]:
    try:
        data = json_text.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}); delete the cache folder to extract "
                              "again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; delete the cache folder to extract again")
    return data


def _check_matches(out: Path, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    # the teacher by its weights where both sides could read them (paths differ between machines), else by name;
    # the SAE by its files' hash likewise
    by_weights = bool(stored.get("teacher_fingerprint") and expected.get("teacher_fingerprint"))
    by_content = bool(stored.get("sae_sha256") and expected.get("sae_sha256"))
    for key in MATCH_KEYS:
        if key == ("teacher" if by_weights else "teacher_fingerprint") or (key == "sae" and by_content) or (
                key in _NOT_RECORDED_BEFORE and key not in stored):
            continue
        value = stored.get(key, _OLD_DEFAULTS.get(key))
        if key == "sae_sha256" and by_content and value != expected.get(key) and expected.get("sae") and \
                same_sae(value, expected["sae"], expected.get("teacher_layer")):
            continue  # (a cache made before: the hash of the SAE's whole folder)
        if key in expected and value != expected[key]:
            raise ConfigError(f"{out / 'meta.json'}: concept cache was made with {key}={value!r}, "
                              f"not {expected[key]!r} as asked here; use another cache directory")


def check_meta_types(where: Path, meta: Any) -> None:
    """DataError unless a cache's meta.json has the shapes reading it relies on (a damaged or edited file)."""
    def bad(what: str) -> DataError:
        return DataError(f"{where}: {what}; the concept cache's meta.json is damaged: extract it again")

    if not isinstance(meta, dict):
        raise bad("expected a JSON object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise DataError(f"{where}: format_version is {version!r}; this cocomix reads concept caches of format 1 to "
                        f"{FORMAT_VERSION}: upgrade cocomix, or extract the cache again")
    for key, least in (("seq_len", 2), ("k_attr", 1), ("n_latents", 1)):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise bad(f"{key} is {value!r}, expected an integer >= {least}")
    windows = meta.get("windows")
    if not isinstance(windows, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                for n in windows.values()):
        raise bad(f"windows is {windows!r}, expected a count of windows per split")
    try:
        dtype = np.dtype(meta.get("dtype"))
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "iu":
        raise bad(f"dtype is {meta.get('dtype')!r}, expected an integer dtype name such as 'int32'")
    sae_k, rec = meta.get("sae_k"), meta.get("teacher_shape")  # (what the FLOPs count reads; absent in old caches)
    if sae_k is not None and (not isinstance(sae_k, int) or isinstance(sae_k, bool) or sae_k < 1):
        raise bad(f"sae_k is {sae_k!r}, expected an integer >= 1")
    try:
        if rec is not None:
            shape_record(rec)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise bad(f"teacher_shape is {str(rec)[:80]}, expected the teacher's shape as cocomix records it") from None


class TargetCache:
    """Read-only access to extracted targets, aligned with the token store's windows."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.dtype = np.dtype(meta["dtype"])
        self._mm: dict[str, np.memmap] = {}

    def fingerprint(self) -> str:
        """What made these targets (meta.json's MATCH_KEYS: teacher, SAE, layer, selection, k_attr, the store's
        identity), hashed: the same for a copy of the cache at another path, another for targets of another SAE
        or teacher. A run records it in every checkpoint (`Method.input_fingerprints`)."""
        import hashlib

        made_by = {k: self.meta.get(k) for k in MATCH_KEYS}
        return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()

    @classmethod
    def open(cls, path: str | Path, expect: dict[str, Any] | None = None) -> TargetCache:
        """Open a complete cache; `expect` (a subset of meta keys) must match what made it."""
        from cocomix.outputs import output_kind

        path = Path(path)
        kind = output_kind(path)
        if kind not in (None, "a concept cache"):
            raise DataError(f"{path}: holds {kind}, not a concept cache (the folder `cocomix extract-concepts` "
                            "wrote)")
        try:
            meta = json_text.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path / 'meta.json'}: missing or unreadable concept cache ({e})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path / 'meta.json'}: expected a JSON object (a concept cache's meta.json)")
        if not meta.get("complete"):
            if not (path / "targets_train.bin").exists():  # e.g. --splits val only: training reads train
                raise DataError(f"{path}: holds no train targets (extracted with --splits without train); training "
                                "reads the train split: run `cocomix extract-concepts --splits train` on it")
            raise DataError(f"{path}: concept extraction of the train split is incomplete; run `cocomix "
                            "extract-concepts` again (with train in --splits) to resume it")
        check_meta_types(path / "meta.json", meta)
        _check_matches(path, meta, expect or {})
        return cls(path, meta)

    def batch(self, split: str, chunk_ids: list[int]) -> torch.Tensor:
        """Targets (B, T, k_attr) int64 of the given windows; the final position is -1."""
        if split not in self._mm:
            if split not in self.meta.get("complete_splits", self.meta.get("splits", SPLITS)):
                raise DataError(f"{self.path}: no complete {split} targets in this concept cache; run `cocomix "
                                f"extract-concepts --splits {split}` on it")
            shape = (self.meta["windows"][split], self.meta["seq_len"] - 1, self.meta["k_attr"])
            path = self.path / f"targets_{split}.bin"
            want = int(np.prod(shape)) * self.dtype.itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                raise DataError(f"{path}: {'missing' if size is None else f'{size} bytes'}, expected {want} "
                                f"({shape[0]} windows × {shape[1]} positions × {shape[2]} targets); the cache is "
                                "damaged: extract it again")
            self._mm[split] = np.memmap(path, dtype=self.dtype, mode="r", shape=shape)
        rows = torch.from_numpy(self._mm[split][np.asarray(chunk_ids)].astype(np.int64))  # (B, T-1, k_attr)
        if rows.numel() and (int(rows.max()) >= self.meta["n_latents"] or int(rows.min()) < 0):
            out = ((rows >= self.meta["n_latents"]) | (rows < 0)).flatten(1).any(1).tolist()  # (B,)
            damaged = [c for c, o in zip(chunk_ids, out, strict=True) if o]
            raise DataError(f"{self.path / f'targets_{split}.bin'}: holds latent ids outside [0, "
                            f"{self.meta['n_latents']}) in window{'s' if len(damaged) > 1 else ''} "
                            f"{', '.join(map(str, damaged[:4]))}{'…' if len(damaged) > 4 else ''}; the cache is "
                            "damaged: extract it again")
        last = torch.full((rows.shape[0], 1, rows.shape[2]), INVALID, dtype=torch.int64)
        return torch.cat((rows, last), dim=1)
