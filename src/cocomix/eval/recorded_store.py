"""The token store a run trained and validated on, as its latest checkpoint recorded it (`resume.store_identity`:
split sizes, tokenizer, sampled digests of the ids, which moving the store keeps); `compare` groups seeds and flags
validation by it.

No paper equation.
"""

from __future__ import annotations

from pathlib import Path

from cocomix.errors import CocomixError


def recorded_store(path: Path) -> tuple[str | None, int | None, str | None]:
    """(the validation split: its token count and val.bin's sampled digest; that token count; the train split and
    tokenizer likewise), Nones where the run's latest checkpoint records none (or there is none to read)."""
    try:
        from cocomix.train.checkpoint import latest_checkpoint, read_state

        ckpt = latest_checkpoint(path)
        store = read_state(ckpt).get("store") if ckpt is not None else None
    except CocomixError:
        return None, None, None
    if not isinstance(store, dict) or "val_sampled_sha256" not in store:
        return None, None, None
    tokens = store.get("val_tokens")

    def digest(key: str) -> str:
        return str(store.get(key))[:12]

    train = (f"{store.get('train_tokens')} tokens, {digest('train_sampled_sha256')}, tokenizer "
             f"{digest('tokenizer_sha256')}" if "train_sampled_sha256" in store else None)
    return f"{tokens} tokens, {digest('val_sampled_sha256')}", tokens if isinstance(tokens, int) else None, train
