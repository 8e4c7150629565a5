"""Named run configs: tiny CPU presets for the embedded corpus, and the paper's NTP settings (App. A).

Paper presets follow the official configs (`conf/setup/gpt2_*_ntp.yaml`): GPT-2 tokenizer (V = 50257), context
1024, AdamW β = (0.9, 0.95), weight decay 0.1 on every parameter, peak lr 6e-4 / 3e-4 / 2e-4, warm-up 130 / 130
/ 65 steps, cosine to 10%, 40k / 40k / 20k steps of 0.5M / 0.5M / 1M tokens (20B tokens). Dropout is 0.1: the
official config's `dropout: 0.0` is never wired into the model, so the published runs trained with GPT-2's 0.1.
The global batch is micro_batch_size · grad_accum · world_size: the presets give 512 / 1024 windows on one
process; divide grad_accum by the number of GPUs under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable

from cocomix.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cocomix.errors import ConfigError


def tiny() -> RunConfig:
    """~1M-parameter GPT-2-flavour NTP on the embedded Shakespeare corpus; a few minutes on 2 CPU cores."""
    return RunConfig(
        method="ntp",
        model=ModelConfig(flavour="gpt2", vocab_size=4096, n_layer=4, n_head=4, d_model=128, context_length=128),
        data=DataConfig(path="data/shakespeare", seq_len=128),
        train=TrainConfig(steps=1000, micro_batch_size=16, lr=2e-3, warmup_steps=30, eval_every=250,
                          eval_batches=0, save_every=250, log_every=50, device="cpu"),
    )


def tiny_llama() -> RunConfig:
    """The tiny preset with the Llama flavour (RoPE, RMSNorm, SwiGLU, no biases)."""
    base = tiny()
    return RunConfig(method="ntp", model=ModelConfig(flavour="llama", vocab_size=4096, n_layer=4, n_head=4,
                                                     d_model=128, context_length=128), data=base.data,
                     train=base.train)


def _paper_ntp(d: int, n_layer: int, n_head: int, lr: float, steps: int, warmup: int, windows: int,
               eval_every: int, save_every: int) -> RunConfig:
    micro = 16
    return RunConfig(
        method="ntp",
        model=ModelConfig(flavour="gpt2", vocab_size=50257, n_layer=n_layer, n_head=n_head, d_model=d,
                          context_length=1024, dropout=0.1),
        data=DataConfig(path="data/openwebtext", seq_len=1024),
        train=TrainConfig(steps=steps, micro_batch_size=micro, grad_accum=windows // micro, lr=lr,
                          warmup_steps=warmup, min_lr_ratio=0.1, weight_decay=0.1, decay_all_params=True,
                          grad_clip=1.0, eval_every=eval_every, eval_batches=1000 // micro + 1,
                          save_every=save_every, log_every=10),
    )


def gpt2_69m_ntp() -> RunConfig:
    """NTP-69M: 8 layers, d=624, 8 heads (parameter-matched to CoCoMix-69M at d=512)."""
    return _paper_ntp(624, 8, 8, 6e-4, 40_000, 130, 512, 1000, 2000)


def gpt2_386m_ntp() -> RunConfig:
    """NTP-386M: 24 layers, d=1072, 16 heads."""
    return _paper_ntp(1072, 24, 16, 3e-4, 40_000, 130, 512, 1000, 2000)


def gpt2_1b_ntp() -> RunConfig:
    """NTP-1.38B: 24 layers, d=2096, 16 heads, 1M-token batches."""
    return _paper_ntp(2096, 24, 16, 2e-4, 20_000, 65, 1024, 500, 1000)


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "tiny": tiny,
    "tiny-llama": tiny_llama,
    "gpt2-69m-ntp": gpt2_69m_ntp,
    "gpt2-386m-ntp": gpt2_386m_ntp,
    "gpt2-1b-ntp": gpt2_1b_ntp,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]()
