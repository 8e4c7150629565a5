"""What a teacher and an SAE are, by content: `sae_sha256` (the SAE's files; `same_sae` compares a record with a
path, older records' whole-folder hash included) and `teacher_fingerprint` (a local
teacher's weights, sampled). Target caches, runs (in every checkpoint), `train-sae` outputs and concept labels
record them, so that a file moved to another path still matches and the same path holding other weights does not.

No paper equation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cocomix.digest import file_sha256, files_sha256


def sae_sha256(sae_spec: str, teacher_layer: int | None) -> str | None:
    """The SAE's content hash, or None for a spec that is no local path: sha256 of the files `load_sae` reads
    (`cocomix.sae.formats.sae_files`: a SAELens or sparsify folder's cfg.json then weights, in a folder of
    sparsify hookpoints the teacher_layer's), so that a README or a hub download's `.cache/` beside them does not
    change it. For a folder holding only those two files this equals the hash of the whole folder, which cocomix
    recorded before."""
    from cocomix.sae.formats import sae_files

    return files_sha256(sae_files(sae_spec, teacher_layer)) if Path(sae_spec).expanduser().exists() else None


def same_sae(recorded: str, sae_spec: str, teacher_layer: int | None) -> bool:
    """Whether the SAE at `sae_spec` is the one a record's `sae_sha256` names: the hash now, or the hash of its
    whole folder, which cocomix recorded before 2026-12-02 (checkpoints, target caches, concept labels; it differs
    from the hash now where other files lie beside the SAE's, as a hub download's `sparsity.safetensors`)."""
    from cocomix.sae.formats import sae_path

    if not Path(sae_spec).expanduser().exists():
        return False
    return recorded == sae_sha256(sae_spec, teacher_layer) or recorded == file_sha256(sae_path(sae_spec,
                                                                                               teacher_layer))


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE = 1 << 20


def teacher_fingerprint(spec: str) -> str | None:
    """A fingerprint of a local teacher's weights, or None for a hub name (then the name itself is compared).

    Cheap on any teacher size: sha256 over config.json and, per weight file (for a cocomix run, the checkpoint
    `Teacher.from_pretrained` loads), its name, size and three 1 MiB samples (start, middle, end). Another model,
    shape or fine-tune changes it; a path that differs between machines does not.
    """
    if not spec:  # no teacher named (a run that reads its targets from a cache)
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        return None
    if (path / "checkpoints").is_dir() or (path / "state.json").is_file():
        from cocomix.train.checkpoint import resolve_checkpoint

        files = [resolve_checkpoint(path)[1] / "model.safetensors"]
    elif path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name ==
                                                                      "config.json"))
    else:
        files = [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            if f.name == "config.json" or size <= 3 * _SAMPLE:
                h.update(fh.read())
                continue
            for start in (0, size // 2, size - _SAMPLE):
                fh.seek(start)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()
