"""CoCoMix (paper §2.2, Eq. 4): L = L_NTP + λ · L_concept, with the concept seam of `cocomix.model.concept`.

L_concept = mean over positions of (1/k_attr) Σ_i CE(concept_logits_t, target_{t,i})     (Eq. 2, official code)

computed as mean_t [logsumexp(z_t) − mean_i z_t[target_i]] with one logsumexp per position. Targets come from the
frozen teacher + SAE every step (`compute_targets`, official attribution by default) or from a target cache
(`cocomix extract-concepts`), read by window id. The final position has no next token: it is left out unless
`concept.mask_last_position` is false, which reproduces the official code (the topk of an all-zero row: arbitrary
ids there, {0, …, k_attr−1} here, what a CPU topk returns).

Ablations (§3.3) are options of `ConceptConfig`: `selection="activation"`, `mixing="none"` (prediction only),
`lambda_concept=0` (mixing only), `mixing="add"`, and `target="hidden"` (regress the teacher's normalised hidden
state with a 2-layer MLP under an ℓ1 / ℓ2 / cosine loss, then compress and mix it the same way).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cocomix.config import ConceptConfig
from cocomix.errors import CocomixWarning, ConfigError, named_by
from cocomix.methods.base import Batch, Method
from cocomix.model import Transformer
from cocomix.model.concept import ConceptSeam, HiddenSeam, normalize
from cocomix.model.concept_head import whole_logits_loss
from cocomix.teacher_precision import teacher_dtype, teacher_precision

if TYPE_CHECKING:
    from cocomix.concepts.cache import TargetCache
    from cocomix.config import RunConfig
    from cocomix.data.store import TokenStore
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher


def training_targets(targets: torch.Tensor, mask_last: bool = True) -> torch.Tensor:
    """The labels trained on: with mask_last False the final position (marked invalid, −1) is trained towards
    labels 0 … k_attr−1, the official code's topk of an all-zero row as a CPU computes it (on a GPU its ids are
    arbitrary)."""
    if mask_last:
        return targets
    targets = targets.clone()
    targets[:, -1] = torch.arange(targets.shape[-1], device=targets.device)
    return targets


def concept_loss(logits: torch.Tensor, targets: torch.Tensor, mask_last: bool = True) -> torch.Tensor:
    """Mean over valid positions of the k_attr-averaged C-way CE: logits (B, T, C), targets (B, T, k_attr).

    Targets < 0 mark invalid positions (see `training_targets` for mask_last). Training computes the same loss
    fused with the head (`cocomix.model.concept_head`); this unfused form serves evaluation and tests.
    """
    return whole_logits_loss(logits, training_targets(targets, mask_last))


def hidden_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, reduction: str = "sum") -> torch.Tensor:
    """The `hidden` ablation's regression loss between pred and target (B, T, d_con), a mean over positions of
    ‖target − pred‖₁ or ‖target − pred‖²₂ (paper §3.3b; `reduction="mean"` also averages over d_con) or of
    1 − cosine similarity."""
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    err = (pred - target).abs() if kind == "l1" else (pred - target).pow(2)     # (B, T, d_con)
    return err.sum(-1).mean() if reduction == "sum" else err.mean()


class CoCoMix(Method):
    """Continuous Concept Mixing: concept prediction from the student's hidden state and concept-vector mixing."""

    name = "cocomix"
    # every concept.* setting but KD's weight and the pause slot's form (the ablations that leave some unread —
    # lambda_concept=0, target=hidden — still list them: a change is refused rather than guessed harmless)
    concept_settings = tuple(f"concept.{f.name}" for f in dataclasses.fields(ConceptConfig)
                             if f.name not in ("lambda_kd", "pause_slot"))

    def __init__(self, run: RunConfig) -> None:
        super().__init__(run)
        self.teacher: Teacher | None = None  # set by prepare (online targets, or the hidden-state ablation)
        self.sae: TopKSAE | None = None
        self.cache: TargetCache | None = None  # set by prepare with concept.cache

    def build_model(self) -> Transformer:
        m, c = self.run.model, self.run.concept
        model = Transformer(m)
        if c.target == "hidden":
            seam: ConceptSeam | HiddenSeam = HiddenSeam(c.concept_layer, m.d_model, c.d_teacher, c.mixing, m.init_std)
        else:
            seam = ConceptSeam(c.concept_layer, m.d_model, c.n_latents, c.mix_k, c.mixing, m.init_std)
        model.set_seam(seam)
        return model

    def prepare(self, device: torch.device, store: TokenStore) -> None:
        from cocomix.sae import load_sae
        from cocomix.sae.fit import check_sae_fit
        from cocomix.teacher import Teacher

        c = self.run.concept
        if c.lambda_concept == 0:
            return  # the mixing-only ablation needs no targets
        if c.selection == "activation" and not c.mask_last_position:  # (checked here: stored runs still open)
            raise ConfigError("concept.mask_last_position: expected true with selection=activation (false trains "
                              "the final position towards the official attribution's all-zero row, which "
                              "activation selection does not have)")
        if c.target == "concepts" and c.cache:
            self.cache = open_cache(c.cache, self.run, store)
            if c.teacher_precision != "fp32":  # no teacher runs: the setting would be silently without effect
                warnings.warn(f"concept.teacher_precision={c.teacher_precision}: unused with concept.cache (no "
                              "teacher runs in training; extract-concepts computed the cached targets without "
                              "autocast)", CocomixWarning, stacklevel=2)
            return
        if not c.teacher:
            raise ConfigError("concept.teacher: CoCoMix needs a teacher (HF name/folder or cocomix run) unless "
                              "concept.cache is set")
        with named_by("concept.teacher"):
            self.teacher = Teacher.from_pretrained(c.teacher, c.teacher_layer, device=device, dtype=teacher_dtype(
                c.teacher_dtype), layer_field="concept.teacher_layer")
        self.teacher.check_store(store, self.run.data.seq_len, "data.seq_len")
        if self.run.train.activation_checkpointing:  # (undone if next_token falls back to per-position passes)
            self.teacher.checkpoint_blocks()
        width = self.teacher.width
        if c.target == "hidden":
            if width != c.d_teacher:
                raise ConfigError(f"concept.d_teacher: the teacher's residual width is {width}, got {c.d_teacher}")
            return
        if not c.sae:
            raise ConfigError("concept.sae: CoCoMix needs an SAE file or folder unless concept.cache is set")
        with named_by("concept.sae"):
            sae = load_sae(c.sae, k=c.sae_k, teacher_layer=c.teacher_layer, layer_field="concept.teacher_layer")
        self.sae = self.teacher.fit_sae(sae.to(device))
        if self.sae.n_latents != c.n_latents:
            raise ConfigError(f"concept.n_latents: the SAE {c.sae} has {self.sae.n_latents} latents, got "
                              f"{c.n_latents}")
        if self.sae.d_in != width:
            raise ConfigError(f"concept.sae: SAE input width {self.sae.d_in} does not match the teacher's residual "
                              f"width {width} at teacher_layer {c.teacher_layer}")
        if store.num_chunks("train", self.run.data.seq_len) > 0:
            first = store.batch("train", [0], self.run.data.seq_len).to(device)  # (1, T)
            check_sae_fit(self.teacher, self.sae, first, "concept.sae")
            if c.selection == "attribution" and c.attribution_loss == "next_token":  # decided before any write
                self.teacher.decide_next_token(first, c.gradient_at)
        if c.k_attr > self.sae.k:
            raise ConfigError(f"concept.k_attr: at most the SAE's k={self.sae.k}, got {c.k_attr}")
        if self.sae.n_latents < self.sae.k + c.k_attr:  # (`check_target_options`, which the first step would say)
            raise ConfigError(f"concept.sae: {self.sae.n_latents} latents; targets are chosen among at least its "
                              f"k + concept.k_attr = {self.sae.k + c.k_attr}")

    @property
    def unused_parameters(self) -> bool:
        """Prediction only (`mixing="none"`): the compression layer is built but never used."""
        return self.run.concept.mixing == "none"

    def targets(self, batch: Batch) -> torch.Tensor:
        """Concept targets (B, T, k_attr) of the batch, -1 at the final position."""
        from cocomix.concepts.attribution import compute_targets

        c = self.run.concept
        if self.cache is not None:
            if batch.chunk_ids is None:
                raise ConfigError("concept.cache: cached targets need whole store windows (chunk ids)")
            return self.cache.batch(batch.split, batch.chunk_ids).to(batch.ids.device)
        if self.teacher is None or self.sae is None:
            raise RuntimeError("CoCoMix.prepare() was not called before training")
        with teacher_precision(c.teacher_precision, batch.ids.device):
            return compute_targets(self.teacher, self.sae, batch.ids, k_attr=c.k_attr, selection=c.selection,
                                   multiplier=c.multiplier, attribution_loss=c.attribution_loss,
                                   gradient_at=c.gradient_at)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.run.concept
        if c.lambda_concept == 0:
            ntp, _ = self.student_loss(model, batch.ids)
            return ntp, {"loss": ntp.detach()}
        if c.target == "hidden":
            if self.teacher is None:
                raise RuntimeError("CoCoMix.prepare() was not called before training")
            ntp, out = self.student_loss(model, batch.ids)
            with teacher_precision(c.teacher_precision, batch.ids.device):
                hidden = self.teacher.hidden(batch.ids)  # the forward ends at the capture block
            aux = hidden_loss(out.aux["hidden_pred"], normalize(hidden.float())[0], c.hidden_loss,
                              c.hidden_loss_reduction)
        else:
            # targets first: the teacher's transient memory is freed before the student's activations exist
            targets = training_targets(self.targets(batch), c.mask_last_position)
            ntp, out = self.student_loss(model, batch.ids, concept_targets=targets)
            aux = out.aux["concept_loss"]
        total = ntp + c.lambda_concept * aux
        return total, {"loss": ntp.detach(), "concept_loss": aux.detach(), "total_loss": total.detach()}


def open_cache(path: str, run: RunConfig, store: TokenStore) -> TargetCache:
    """The target cache for this run, checked against its settings and token store."""
    from cocomix.concepts.cache import TargetCache
    from cocomix.concepts.identity import sae_sha256, teacher_fingerprint
    from cocomix.train.resume import store_identity

    c = run.concept
    identity = store_identity(store)
    expect = {"k_attr": c.k_attr, "n_latents": c.n_latents, "seq_len": run.data.seq_len, "selection": c.selection,
              "teacher_layer": c.teacher_layer, "teacher_dtype": c.teacher_dtype,
              "multiplier": c.multiplier, "attribution_loss": c.attribution_loss, "gradient_at": c.gradient_at,
              **{k: identity[k] for k in ("tokenizer_sha256", "train_tokens", "train_sampled_sha256")}}
    if c.teacher:  # a run may name no teacher when it reads its targets from the cache: the cache's stands
        expect.update(teacher=c.teacher, teacher_fingerprint=teacher_fingerprint(c.teacher))  # by weights if local
    if c.sae_k is not None:
        expect["sae_k"] = c.sae_k
    if c.sae and Path(c.sae).exists():  # the SAE by content (its path may differ between machines)
        expect.update(sae=c.sae, sae_sha256=sae_sha256(c.sae, c.teacher_layer))
    with named_by("concept.cache"):  # a damaged cache or one made otherwise: named by the setting that gave it
        return TargetCache.open(path, expect=expect)
