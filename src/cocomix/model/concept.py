"""The CoCoMix concept seam (paper §2.2, Eq. 2-4; official `GPT2CoCoMixModel.forward`, official-implementation.md §2.4).

At block index `concept_layer`, with h (B, T, d) the hidden states entering that block:

    mu, sd = mean_d(h), std_d(h) (unbiased)                  per-position scalars; gradients flow through them
    x      = (h − mu) / (sd + 1e-5) − pre_bias               parameter-free LN, as the SAE's input norm
    z      = x @ W_pred.T + b_pred                           concept_logits (B, T, C)         [Eq. 2's head]
    v, i   = topk(z, mix_k)                                  raw logits kept, no ReLU
    ĉ      = (Σ_j v_j · W_comp[i_j] + b_comp + pre_bias) · sd + mu      concept_vector (B, T, d)   [Eq. 3]
    mixing "insert":  [h_0, ĉ_0, h_1, ĉ_1, …] for the upper blocks; the next token is read from the ĉ slots [Eq. 4]
    mixing "add":     h + ĉ (the paper's addition ablation, §3.3)
    mixing "none":    h unchanged (concept prediction only, §3.3)

The compression is the official dense `compress_layer(mask · z)` computed as a gather of the mix_k selected rows
of W_comp (stored (C, d), row c = concept c's direction): same function, same gradients, no C × d matmul.
Concept slots get no position embedding (gpt2) and share their token's rotary position (llama).

`steer(concepts, alphas)` multiplies chosen concept logits by α before the TopK (paper §3.2, steering).

In training the method passes the concept targets into the forward (`Transformer(ids, concept_targets=…)`): the
head, L_concept and the TopK then run fused and chunked (`concept_head.py`) and aux holds `concept_loss`.
Otherwise (eval, generation, lm-eval) the TopK runs over row chunks of at most `CHUNK_ELEMENTS` logits, so the
(B, T, C) logits are never held whole (at C = 32768 they are 128 KiB per position in fp32); only a forward asked
for them (`Transformer(ids, concept_logits=True)`: `inspect`, the steering metric) computes them whole and returns
them in aux["concept_logits"]. Both give the same values: each chunk is the same rows of the same matmul.

`PauseSeam` is the pause-token baseline: a learned vector inserted after every token at the same layer
(`concept.pause_slot = "vector"`, the paper's wording), or that vector added to a copy of its token's hidden state
(`"token"`: the same extra computation as CoCoMix's slot, with no teacher information in it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cocomix.model.concept_head import chunk_rows, concept_head, whole_logits_loss
from cocomix.model.seam import Seam, interleave, read_slots

MIXINGS = ("insert", "add", "none")
LN_EPS = 1e-5


def normalize(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Official parameter-free LN: ((h − mu) / (sd + eps), mu, sd) with the unbiased std; h (…, d)."""
    mu = h.mean(dim=-1, keepdim=True)
    sd = h.std(dim=-1, keepdim=True)
    return (h - mu) / (sd + LN_EPS), mu, sd


class ConceptSeam(Seam):
    """Concept head, TopK compression and mixing at block index `layer` (see the module docstring)."""

    def __init__(self, layer: int, d_model: int, n_latents: int, mix_k: int, mixing: str = "insert",
                 init_std: float = 0.02) -> None:
        super().__init__(layer)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        if not 1 <= mix_k <= n_latents:
            raise ValueError(f"mix_k must be in [1, n_latents={n_latents}], got {mix_k}")
        self.mix_k, self.mixing = mix_k, mixing
        self.pre_bias = nn.Parameter(torch.zeros(d_model))
        self.predictor = nn.Linear(d_model, n_latents)
        self.compress_weight = nn.Parameter(torch.empty(n_latents, d_model))
        self.compress_bias = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.predictor.weight, 0.0, init_std)
        nn.init.zeros_(self.predictor.bias)
        nn.init.normal_(self.compress_weight, 0.0, init_std)
        self._steer: tuple[Tensor, Tensor] | None = None
        self.last_topk: Tensor | None = None  # (B, T, mix_k) indices of the last steered forward

    @property
    def n_latents(self) -> int:
        return self.compress_weight.shape[0]

    def steer(self, concepts: Tensor | None, alphas: Tensor | None = None) -> None:
        """Multiply the logits of `concepts` (n,) by `alphas` (n,) before the TopK; None switches steering off.
        While steering, each forward records the TopK indices in `last_topk`. A concept whose scaled logit still
        ranks below the mix_k largest is not mixed: steering it changes nothing at that position."""
        if concepts is not None and (alphas is None or alphas.shape != concepts.shape):
            got = None if alphas is None else tuple(alphas.shape)
            raise ValueError(f"steer: expected alphas of the concepts' shape {tuple(concepts.shape)}, got {got}")
        if concepts is not None:  # (index_copy would fail at the next forward, or take one of two repeats)
            n, c = self.predictor.out_features, concepts.long()
            outside = c.numel() > 0 and not 0 <= int(c.min()) <= int(c.max()) < n
            if c.dim() != 1 or outside or c.unique().numel() < c.numel():
                raise ValueError(f"steer: expected distinct concept indices in [0, {n - 1}], got {c.tolist()}")
        self._steer = None if concepts is None else (concepts.long(), alphas.float())

    def concept_logits(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, T, d) -> (concept_logits (B, T, C), mu (B, T, 1), sd (B, T, 1))."""
        x, mu, sd = normalize(h)
        return self.predictor(x - self.pre_bias), mu, sd

    def _steered(self, logits: Tensor) -> Tensor:
        """The logits (…, C) with the steered concepts' logits × α (unchanged when not steering)."""
        if self._steer is None:
            return logits
        idx, alpha = self._steer
        scale = torch.ones(logits.shape[-1], dtype=logits.dtype, device=logits.device)
        return logits * scale.index_copy(0, idx.to(logits.device), alpha.to(logits))

    def _record(self, indices: Tensor) -> None:
        if self._steer is not None:
            self.last_topk = indices.detach()  # which concepts were mixed, for steering reports

    def concept_vector(self, logits: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
        """TopK of the logits compressed to d and un-normalised: (B, T, C) -> (B, T, d)."""
        values, indices = torch.topk(self._steered(logits), self.mix_k, dim=-1)  # (B, T, K)
        self._record(indices)
        return self.compress_topk(values, indices, mu, sd)

    @torch.compiler.disable  # eager under train.compile: a traced chunk loop is unrolled (see concept_head.py)
    def topk_chunked(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """TopK of the (steered) concept logits of the normalised x (B, T, d) -> values, indices (B, T, mix_k),
        computed over row chunks of at most CHUNK_ELEMENTS logits: the (B, T, C) logits never exist whole."""
        B, T, d = x.shape
        flat, rows = x.reshape(B * T, d), chunk_rows(self.n_latents)
        if B * T <= rows:  # one chunk: the whole matmul, as `concept_logits` computes it
            parts = [torch.topk(self._steered(self.predictor(x)), self.mix_k, dim=-1)]
        else:
            parts = [torch.topk(self._steered(self.predictor(flat[s:s + rows])), self.mix_k, dim=-1)
                     for s in range(0, B * T, rows)]  # each (n, K); the (n, C) chunk is freed after its TopK
        values = torch.cat([p.values.reshape(-1, self.mix_k) for p in parts]).view(B, T, self.mix_k)
        indices = torch.cat([p.indices.reshape(-1, self.mix_k) for p in parts]).view(B, T, self.mix_k)
        self._record(indices)
        return values, indices

    def compress_topk(self, values: Tensor, indices: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
        """Σ_j values_j · W_comp[indices_j] + biases, un-normalised: (B, T, K) twice -> (B, T, d)."""
        B, T, K = values.shape
        rows = F.embedding_bag(indices.reshape(-1, K), self.compress_weight,
                               per_sample_weights=values.reshape(-1, K).to(self.compress_weight.dtype),
                               mode="sum").view(B, T, -1)  # (B, T, d)
        return (rows + self.compress_bias + self.pre_bias) * sd + mu

    def insert(self, h: Tensor, pos: Tensor, targets: Tensor | None = None,
               keep_logits: bool = False) -> tuple[Tensor, Tensor, dict]:
        """See `Seam.insert`; `keep_logits` returns the whole (B, T, C) concept logits in aux."""
        if keep_logits or (targets is not None and self._steer is not None):
            logits, mu, sd = self.concept_logits(h)  # unsteered: L_concept scores the prediction itself
            aux = {"concept_logits": logits}
            if targets is not None:  # the same L_concept as the fused head, from the whole logits
                aux["concept_loss"] = whole_logits_loss(logits, targets)
            if self.mixing == "none":
                return h, pos, aux
            c = self.concept_vector(logits, mu, sd)  # (B, T, d)
        elif targets is not None:  # training: fused, chunked head + L_concept + TopK
            x, mu, sd = normalize(h)
            k = 0 if self.mixing == "none" else self.mix_k
            values, indices, loss = concept_head(x - self.pre_bias, self.predictor.weight, self.predictor.bias,
                                                 targets, k)
            aux = {"concept_loss": loss}
            if self.mixing == "none":
                return h, pos, aux
            c = self.compress_topk(values, indices, mu, sd)
        else:  # inference: TopK over row chunks, no (B, T, C) logits held
            aux = {}
            if self.mixing == "none":
                return h, pos, aux
            x, mu, sd = normalize(h)
            values, indices = self.topk_chunked(x - self.pre_bias)
            c = self.compress_topk(values, indices, mu, sd)
        if self.mixing == "add":
            return h + c, pos, aux
        return interleave(h, c), pos.repeat_interleave(2), aux

    def read(self, h: Tensor) -> Tensor:
        return read_slots(h) if self.mixing == "insert" else h


class HiddenSeam(Seam):
    """Ablation (§3.3): predict the teacher's (normalised) hidden state with a 2-layer MLP instead of concepts,
    then compress it to d (a linear map d_con -> d) and mix it in the same way. It has no concepts: nothing to
    inspect or steer."""

    def __init__(self, layer: int, d_model: int, d_teacher: int, mixing: str = "insert",
                 init_std: float = 0.02) -> None:
        super().__init__(layer)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.mixing = mixing
        self.pre_bias = nn.Parameter(torch.zeros(d_model))
        self.predictor = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_teacher))
        self.compress = nn.Linear(d_teacher, d_model)
        for m in (self.predictor[0], self.predictor[2], self.compress):
            nn.init.normal_(m.weight, 0.0, init_std)
            nn.init.zeros_(m.bias)

    def insert(self, h: Tensor, pos: Tensor, targets: Tensor | None = None,
               keep_logits: bool = False) -> tuple[Tensor, Tensor, dict]:
        x, mu, sd = normalize(h)
        pred = self.predictor(x - self.pre_bias)  # (B, T, d_teacher)
        aux = {"hidden_pred": pred}
        if self.mixing == "none":
            return h, pos, aux
        c = (self.compress(pred) + self.pre_bias) * sd + mu  # (B, T, d)
        if self.mixing == "add":
            return h + c, pos, aux
        return interleave(h, c), pos.repeat_interleave(2), aux

    def read(self, h: Tensor) -> Tensor:
        return read_slots(h) if self.mixing == "insert" else h


class PauseSeam(Seam):
    """Pause-token baseline: a slot after every token at block `layer`; the next token is read from the slots.

    Each slot is the learned vector `pause`, plus its token's hidden state when `copy_token`. A bare vector carries
    no position and no token information, so the slot's query is the same at every position and must learn to find
    its token by attention alone; at tiny scale this stays at the unigram plateau (see the README's results)."""

    def __init__(self, layer: int, d_model: int, init_std: float = 0.02, copy_token: bool = False) -> None:
        super().__init__(layer)
        self.pause = nn.Parameter(torch.randn(d_model) * init_std)
        self.copy_token = copy_token

    def insert(self, h: Tensor, pos: Tensor, targets: Tensor | None = None,
               keep_logits: bool = False) -> tuple[Tensor, Tensor, dict]:
        slots = self.pause.to(h.dtype).expand_as(h)                               # (B, S, d)
        if self.copy_token:
            slots = h + slots                                                     # the token's state + pause
        return interleave(h, slots), pos.repeat_interleave(2), {}

    def read(self, h: Tensor) -> Tensor:
        return read_slots(h)
