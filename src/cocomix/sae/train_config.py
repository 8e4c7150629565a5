"""`SAETrainConfig`: every setting of `cocomix train-sae` (TopK SAE training, Gao et al. 2024), validated.

Defaults follow Gao et al. ("Scaling and evaluating sparse autoencoders", 2024) and OpenAI's `sparse_autoencoder`
where they say something: TopK k = 32 (the SAE the paper uses), input layer norm (`normalize`), AuxK with k_aux =
d_in / 2 and α = 1/32 (AuxK itself in EleutherAI sparsify's form, see `objective.py`), Adam with ε = 6.25e-10,
learning rate 2e-4 / sqrt(n_latents / 2^14). Width defaults to 32 × d_in (the paper's GPT-2 SAE has 32,768 ≈ 42.7 ×
768 latents). Where they give no number at our scale we choose one and say so: a latent is "dead" for AuxK after
`dead_tokens` training tokens without firing (Gao et al. use 10M tokens; by default we use min(10M, a quarter of
the run) so that short runs revive latents too).

Trains the SAE of paper §2.1 (c = TopK(E(h)), ĥ = D(c)), not one of CoCoMix's equations.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
from dataclasses import dataclass
from typing import Any

from cocomix.config_checks import check, is_int, is_num
from cocomix.errors import ConfigError


@dataclass(frozen=True)
class SAETrainConfig:
    teacher: str
    """HF causal LM name or folder, or a cocomix run directory: whose residual stream the SAE learns."""
    teacher_layer: int
    """Block whose output is read (transformer_lens blocks.{L}.hook_resid_post)."""
    data: str
    """Token store (from `cocomix prepare`) that the activations are streamed from."""
    seq_len: int = 128
    """Window length fed to the teacher; use the training run's data.seq_len so the SAE sees the same positions."""
    n_latents: int = 0
    """SAE width C; 0 means expansion × d_in."""
    expansion: int = 32
    """Width as a multiple of the teacher's residual width, used when n_latents is 0."""
    k: int = 32
    """Active latents per token (TopK)."""
    normalize: bool = True
    """OpenAI's parameter-free layer norm of the input before encoding (the paper's SAE has it)."""
    steps: int = 2000
    """Optimizer steps."""
    batch_tokens: int = 4096
    """Activation vectors per step."""
    lr: float = 0.0
    """Adam learning rate; 0 means 2e-4 / sqrt(n_latents / 2^14) (Gao et al.)."""
    warmup_steps: int = 100
    """Linear warm-up from 0 (more than `steps` is allowed, with a note: the peak is never reached)."""
    decay_fraction: float = 0.2
    """The last fraction of steps decays the learning rate linearly to 0."""
    auxk_alpha: float = 1.0 / 32
    """Weight of the AuxK loss (dead latents reconstruct the residual error)."""
    k_aux: int = 0
    """Latents used by AuxK; 0 means d_in // 2."""
    dead_tokens: int = 0
    """A latent is dead after this many training tokens without firing; 0 means min(10M, steps·batch_tokens/4)."""
    chunk_tokens: int = 262144
    """Activations computed by the teacher at once and shuffled together (a multiple of batch_tokens and seq_len)."""
    teacher_batch: int = 16
    """Windows per teacher forward pass."""
    eval_tokens: int = 131072
    """Validation tokens for the final FVU / L0 / dead-latent report (capped by the split's size)."""
    seed: int = 0
    """Seeds window order, shuffling and initialisation."""
    checkpoint_every: int = 500
    """Steps between resumable checkpoints (0: only at the end)."""
    log_every: int = 50
    """Steps between progress lines and metrics.jsonl entries."""
    device: str = "auto"
    """cpu | cuda | cuda:N | auto."""
    teacher_dtype: str = "float32"
    """Dtype of the teacher's weights: float32 or bfloat16 (half the memory for large teachers)."""

    def __post_init__(self) -> None:
        positive = ("seq_len", "expansion", "k", "steps", "batch_tokens", "chunk_tokens", "teacher_batch",
                    "eval_tokens", "log_every")
        for name in positive:
            value = getattr(self, name)
            check(is_int(value) and value >= 1, name, "a positive integer", value)
        for name in ("n_latents", "k_aux", "dead_tokens", "warmup_steps", "checkpoint_every", "seed",
                     "teacher_layer"):
            value = getattr(self, name)
            check(is_int(value) and value >= 0, name, "a non-negative integer", value)
        if self.seed >= 2**64:
            raise ConfigError(f"seed: expected an integer below 2**64 (torch's seed range), got {self.seed}")
        for name in ("lr", "auxk_alpha", "decay_fraction"):
            value = getattr(self, name)
            check(is_num(value) and value >= 0, name, "a finite number >= 0", value)
        if self.teacher_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"teacher_dtype: expected 'float32' or 'bfloat16', got {self.teacher_dtype!r}")
        check(isinstance(self.normalize, bool), "normalize", "true or false", self.normalize)  # ("false": true)
        if self.decay_fraction > 1:
            raise ConfigError(f"decay_fraction: expected a number in [0, 1], got {self.decay_fraction!r}")
        if self.n_latents and self.k > self.n_latents:
            raise ConfigError(f"k: must not exceed n_latents={self.n_latents}, got {self.k}")
        if self.chunk_tokens % self.batch_tokens:
            raise ConfigError(f"chunk_tokens: must be a multiple of batch_tokens={self.batch_tokens}, "
                              f"got {self.chunk_tokens}")
        if self.chunk_tokens % self.seq_len:
            raise ConfigError(f"chunk_tokens: must be a multiple of seq_len={self.seq_len}, got {self.chunk_tokens}")

    # derived values, resolved against the teacher's width d_in
    def width(self, d_in: int) -> int:
        return self.n_latents or self.expansion * d_in

    def learning_rate(self, d_in: int) -> float:
        return self.lr or 2e-4 / math.sqrt(self.width(d_in) / 2**14)

    def aux_latents(self, d_in: int) -> int:
        return self.k_aux or max(1, d_in // 2)

    @property
    def dead_after(self) -> int:
        return self.dead_tokens or min(10_000_000, max(1, self.steps * self.batch_tokens // 4))

    @property
    def steps_per_chunk(self) -> int:
        return self.chunk_tokens // self.batch_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown SAE training setting {unknown[0]!r} (known: {sorted(known)})")
        return cls(**d)


def field_docs() -> dict[str, str]:
    """{field name: its attribute docstring} of SAETrainConfig (for the CLI help)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(SAETrainConfig)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
