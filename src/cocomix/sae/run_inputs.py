"""What an SAE training run was trained on, by content: the token store's identity and the teacher's weights.

`train-sae` records them in `inputs.json` of its output folder; a rerun (resume, or a finished run asked for again)
compares them with what `--data` and `--teacher` name now. So the same store or teacher named by another path
(absolute instead of relative, another working directory, files moved to node-local scratch) resumes, and the same
relative path that now names another store or teacher is refused instead of mixing two datasets or teachers into
one SAE. A run written before `inputs.json` existed is compared by the paths as given, as it was then.

No paper equation.
"""

from __future__ import annotations

from pathlib import Path

from cocomix import json_text
from cocomix.errors import CocomixError
from cocomix.sae.train_config import SAETrainConfig

INPUTS = "inputs.json"
RELOCATABLE = ("data", "teacher")
"""Settings a rerun may name by another path: what they name is compared by content."""


def run_inputs(cfg: SAETrainConfig) -> dict[str, object]:
    """The token store's identity (split sizes, tokenizer, sampled digests of the ids) and the teacher's weight
    fingerprint (None for a hub name: then the name is what is compared)."""
    from cocomix.concepts.identity import teacher_fingerprint
    from cocomix.data import TokenStore
    from cocomix.train.resume import store_identity

    return {"store": store_identity(TokenStore.open(cfg.data)), "teacher_fingerprint": teacher_fingerprint(cfg.teacher)}


def read_inputs(out: Path) -> dict | None:
    """The inputs recorded in `out`, or None for a run that predates them (or whose record is unreadable)."""
    try:
        recorded = json_text.loads((out / INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("store"), dict) else None


def check_rerun_inputs(cfg: SAETrainConfig, stored: SAETrainConfig, out: Path, recorded: dict) -> None:
    """CocomixError when `cfg.data` or `cfg.teacher` names another store or teacher than the run in `out` (whose
    stored config is `stored`) was trained on."""
    now = run_inputs(cfg)
    store_now = now["store"]
    assert isinstance(store_now, dict)
    changed = [key for key, value in recorded["store"].items() if store_now.get(key) != value]
    if changed:
        raise CocomixError(f"{out}: its SAE was trained on another token store than --data {cfg.data} ({changed[0]} "
                           f"{recorded['store'][changed[0]]!r} -> {store_now.get(changed[0])!r}); point --data at "
                           f"that store ({stored.data} when it was trained) or use another --out")
    before = recorded.get("teacher_fingerprint")
    if before is None and cfg.teacher != stored.teacher:  # trained from a hub name: the name is the identity
        raise CocomixError(f"{out}: holds an SAE training run with other settings (teacher {stored.teacher!r} -> "
                           f"{cfg.teacher!r}); use another --out")
    if before is None and now["teacher_fingerprint"] is not None:  # the name now finds local weights
        raise CocomixError(f"{out}: its SAE was trained on the hub's {stored.teacher!r}, but --teacher "
                           f"{cfg.teacher} now names a local path (here, {Path(cfg.teacher).resolve()}); run from "
                           "another folder or use another --out")
    if before is not None and now["teacher_fingerprint"] != before:
        raise CocomixError(f"{out}: its SAE was trained on another teacher than --teacher {cfg.teacher} (its weights "
                           f"differ from those of {stored.teacher} when it was trained); point --teacher at that "
                           "teacher or use another --out")
