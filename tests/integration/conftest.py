"""A small prepared token store shared by the integration tests (built once per session, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cocomix.data import prepare

LINES = [
    "the king is dead and the queen is sad", "a horse, a horse, my kingdom for a horse",
    "to be or not to be, that is the question", "all the world's a stage and all the men players",
    "now is the winter of our discontent", "shall I compare thee to a summer's day",
    "friends, romans, countrymen, lend me your ears", "what light through yonder window breaks",
]


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(24):
        text = "\n".join(LINES[(i + j) % len(LINES)] + f" {i * j % 7}" for j in range(60))
        (docs / f"doc{i:02d}.txt").write_text(text)
    out = root / "store"
    prepare(f"text:{docs}", out, tokenizer="bpe:320", val_fraction=0.15, progress=False)
    return out


@pytest.fixture(scope="session")
def concept_parts(tmp_path_factory: pytest.TempPathFactory, store_dir: Path) -> tuple[Path, Path]:
    """A small random HF-format teacher (vocab 320, d 32, 3 blocks) with the test store's tokenizer, and a random
    SAELens SAE (32 -> 256, k 8)."""
    import torch

    from cocomix.config import ModelConfig
    from cocomix.export import export_hf
    from cocomix.model import Transformer
    from cocomix.sae import TopKSAE
    from cocomix.sae.saelens import save_saelens

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    export_hf(Transformer(ModelConfig(vocab_size=320, n_layer=3, n_head=2, d_model=32, context_length=64)),
              root / "teacher", tokenizer_dir=store_dir / "tokenizer")
    sae = TopKSAE(32, 256, 8)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.3)
    save_saelens(sae, root / "sae")
    return root / "teacher", root / "sae"
