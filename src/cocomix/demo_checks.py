"""The demo's checks that its stages, reused by existence, belong together (no paper equation): the settings
stamp in OUT/stages.json, the token store at --data, and that an SAE or target cache in OUT was made from the
teacher and SAE there now (compared by content).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cocomix import json_text
from cocomix.atomic import atomic_write_text
from cocomix.errors import CocomixError


def cache_names(selections: tuple[str, ...]) -> list[str]:
    """OUT's target caches: `targets` for attribution, `targets-SELECTION` for another selection rule."""
    return ["targets" if s == "attribution" else f"targets-{s}" for s in selections]


def check_made_from(out: Path, caches: list[str], sae: Path | None = None) -> None:
    """Stages are reused by existence: an SAE (OUT/teacher-sae) or target cache made from another teacher than the
    one OUT/teacher holds now (its folder deleted and trained again with another thread count or machine: other
    weights), or — `sae` given, once the SAE stage is done — a cache made from another SAE, would be used as if
    made from this one; an error names them instead (they are the demo's own, but not removed without being
    asked). Compared by content (`teacher_fingerprint`, `sae_sha256`), so a teacher trained again to the same
    weights keeps them."""
    from cocomix.concepts.identity import same_sae, teacher_fingerprint
    from cocomix.sae.run_inputs import read_inputs

    now = teacher_fingerprint(str(out / "teacher"))
    recorded = {"teacher-sae": (read_inputs(out / "teacher-sae") or {}).get("teacher_fingerprint")}
    metas = {}
    for name in caches:
        try:
            metas[name] = json_text.loads((out / name / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # no cache yet (or a damaged one, which its stage redoes)
            continue
        recorded[name] = metas[name].get("teacher_fingerprint") if isinstance(metas[name], dict) else None
    stale = [name for name, fp in recorded.items() if isinstance(fp, str) and fp != now]
    if sae is not None:
        stale += [name for name, meta in metas.items() if name not in stale and isinstance(meta, dict)
                  and isinstance(meta.get("sae_sha256"), str) and not same_sae(meta["sae_sha256"], str(sae), None)]
    if stale:
        what = "teacher or SAE" if sae is not None else "teacher"
        raise CocomixError(f"{out}: {', '.join(stale)} {'were' if len(stale) > 1 else 'was'} made from another {what} "
                           f"than the one there now (the weights differ); remove {'them' if len(stale) > 1 else 'it'} "
                           f"(or the folder {out}) to make {'them' if len(stale) > 1 else 'it'} again")


def check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    """Stages are reused by existence, so an output folder must not mix settings: a call records the corpus and
    the teacher / SAE step counts in OUT/stages.json, and once any stage's output is in OUT a later call with
    others is an error (a longer teacher would otherwise sit next to an SAE and targets made from the
    shorter one); before that (a call that failed in its data stage) the stamp is replaced. A stamp written before a
    key existed is completed with it."""
    path = out / "stages.json"
    made = any(p.is_dir() for p in out.iterdir()) if out.is_dir() else False  # stages are folders (a log is not)
    if path.exists() and made:  # (a stamp with no stage made after it, as a call whose data stage failed, is redone)
        try:
            old = json_text.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CocomixError(f"{path}: unreadable ({e}); remove the folder {out} to start over") from None
        if not isinstance(old, dict):
            raise CocomixError(f"{path}: expected a JSON object; remove the folder {out} to start over")
        changed = ", ".join(f"{k} {old[k]!r} -> {v!r}" for k, v in stamp.items() if k in old and old[k] != v)
        if changed:
            raise CocomixError(f"{out}: its teacher, SAE and targets were made with other settings ({changed}); "
                               "use another --out, or remove the folder to start over")
        if stamp.keys() <= old.keys():
            return
    atomic_write_text(path, json.dumps(stamp, indent=2))


def store_ready(data: Path, source: str, tokenizer: str) -> bool:
    """Whether DATA already holds the demo's token store (prepared from `source` with the demo's tokenizer); a
    store prepared from something else is an error rather than silently trained on."""
    if data.exists() and not data.is_dir():
        raise CocomixError(f"--data {data}: a file, not a token store folder; give another --data")
    from cocomix.data.store import INCOMPLETE, TOKENIZER_DIR

    try:
        meta = json_text.loads((data / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        streams = [n for n in ("train.bin", "val.bin", TOKENIZER_DIR) if (data / n).exists()]
        if streams and not (data / INCOMPLETE).exists():  # nanoGPT's streams, say: never replaced unasked (and
            # prepare's own refusal would name its --out and --overwrite, not the demo's)
            raise CocomixError(f"--data {data}: holds {', '.join(streams)} but no meta.json, so not a cocomix token "
                               "store; give another --data") from None
        return False
    except (OSError, ValueError) as e:
        raise CocomixError(f"{data / 'meta.json'}: unreadable ({e}); remove {data} to prepare it again") from None
    got = (meta.get("source"), meta.get("tokenizer")) if isinstance(meta, dict) else None
    if got != (source, tokenizer):
        raise CocomixError(f"{data}: holds a token store prepared from {got!r}, not the demo's "
                           f"{(source, tokenizer)!r}; give another --data, or remove it to prepare it again")
    return True
