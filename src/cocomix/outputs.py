"""What kind of cocomix output a folder holds, told by the files that mark it (no paper equation).

Every command that writes into an `--out` folder refuses one that holds another command's output, so that a
mistyped path never mixes a run's checkpoints with a token store, or a report with a run (`check_out_folder` in
`atomic.py` asks `output_kind`). The kinds below are what the commands write; a folder with none of these files
(a new folder, or one with a scheduler's log) holds no output.
"""

from __future__ import annotations

import itertools
from pathlib import Path

RUN = "a cocomix run"
STORE = "a token store"
DEMO = "a demo output (make demo)"  # make demo's and make experiment's OUT (stages.json)

# (kind, files any one of which marks it), tried in order after the folders recognised as a whole below
_BY_FILE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a checkpoint", ("state.json", "manifest.json")),
    (STORE, ("train.bin", "val.bin")),
    ("a concept cache", ("targets_train.bin", "targets_val.bin", "progress.json")),
    ("an SAE", ("sae_weights.safetensors", "sae.safetensors", "cfg.json")),
    ("a model folder", ("model.safetensors",)),
    ("concept descriptions (describe-concepts)", ("concepts.json",)),
    ("a steering metric (steer-eval)", ("steering.json",)),
    ("a compression analysis", ("compression.json",)),
    ("a run comparison (compare)", ("compare.md",)),
)


def output_kind(folder: str | Path) -> str | None:
    """The kind of output `folder` holds, or None (not a folder, or none of the marking files)."""
    path = Path(folder)
    if not path.is_dir():
        return None
    if (path / "stages.json").is_file() or (path / "demo_result.json").is_file():
        return DEMO
    if (path / "summary.json").is_file() and (path / "sae").is_dir():
        return "a train-sae output"
    if (path / "config.json").is_file() and ((path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()):
        return RUN
    return next((kind for kind, files in _BY_FILE if any((path / f).exists() for f in files)), None)


def what_is(path: str | Path) -> str | None:
    """What `path` is when it is not a run directory ("a file", "a missing folder", "holds a concept cache"), for
    errors; None for a run or a folder none of the kinds mark."""
    p = Path(path)
    if not p.exists():
        return "a missing folder"
    if not p.is_dir():
        return "a file"
    kind = output_kind(p)
    return None if kind in (None, RUN) else f"holds {kind}"


def workspace(folder: Path, look_at: int = 200) -> bool:
    """Whether `folder`, or one of its first `look_at` entries, holds a cocomix output other than a model folder: a
    `runs/` of a user's work rather than models downloaded by owner/name (a hub name never starts there)."""
    if not folder.is_dir():
        return False
    return any(kind not in (None, "a model folder")
               for kind in (output_kind(folder), *map(output_kind, itertools.islice(folder.iterdir(), look_at))))
