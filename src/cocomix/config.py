"""Every configuration as a frozen, typed dataclass, with validation and dict/JSON round-tripping (reading them
from dicts, files and overrides is `config_io.py`).

A run is described by one `RunConfig` (model, data, training, method). Each field's docstring says what it
means; `__post_init__` rejects values outside what a field accepts with a `ConfigError` naming the field.
The defaults are GPT-2 small's shape and the paper's concept settings; the paper's runs (App. A) and the tiny
CPU runs are named configs in `presets.py`.

No paper equation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cocomix.config_checks import check, is_int, is_num

FLAVOURS = ("gpt2", "llama")
PRECISIONS = ("auto", "fp32", "bf16")
LOG_BACKENDS = ("tensorboard", "wandb")
WINDOW_OFFSETS = ("random", "fixed")


@dataclass(frozen=True)
class ModelConfig:
    """The student transformer: one module, two flavours."""

    flavour: str = "gpt2"
    """`gpt2` (learned positions, LayerNorm, GELU, biases, tied embeddings: the paper's) or `llama` (RoPE,
    RMSNorm, SwiGLU, no biases)."""
    vocab_size: int = 50257
    """Number of token ids V; every id in the data must be below it."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide `d_model`."""
    d_model: int = 768
    """Residual width d."""
    d_mlp: int | None = None
    """MLP hidden width; None gives 4·d (gpt2) or the SwiGLU width 8·d/3 rounded up to a multiple of 64 (llama)."""
    context_length: int = 1024
    """Longest token sequence the model accepts (size of the gpt2 position table)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention probabilities and residual branches (HF GPT-2 places)."""
    bias: bool | None = None
    """Biases in linear layers and norms; None gives True for gpt2 and False for llama."""
    tie_embeddings: bool = True
    """Share the token embedding with the LM head."""
    norm_eps: float = 1e-5
    """Epsilon of LayerNorm / RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base (llama flavour only)."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std / sqrt(2·n_layer) (GPT-2)."""

    def __post_init__(self) -> None:
        check(self.flavour in FLAVOURS, "model.flavour", f"one of {FLAVOURS}", self.flavour)
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "context_length"):
            v = getattr(self, name)
            check(is_int(v) and v > 0, f"model.{name}", "a positive integer", v)
        check(self.n_layer <= 10_000, "model.n_layer", "at most 10000 blocks", self.n_layer)  # (per-block tuples)
        check(self.d_model % self.n_head == 0, "model.n_head", f"a divisor of d_model={self.d_model}",
               self.n_head)
        if self.flavour == "llama":
            check(self.head_dim % 2 == 0, "model.n_head", "a value giving an even head_dim (RoPE)", self.n_head)
        check(self.d_mlp is None or (is_int(self.d_mlp) and self.d_mlp > 0), "model.d_mlp",
               "a positive integer or null", self.d_mlp)
        check(is_num(self.dropout) and 0.0 <= self.dropout < 1.0, "model.dropout", "a value in [0, 1)", self.dropout)
        for name in ("norm_eps", "init_std", "rope_theta"):
            v = getattr(self, name)
            check(is_num(v) and v > 0, f"model.{name}", "a finite positive number", v)
        check(isinstance(self.tie_embeddings, bool), "model.tie_embeddings", "true or false", self.tie_embeddings)
        check(self.bias is None or isinstance(self.bias, bool), "model.bias", "true, false or null", self.bias)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def use_bias(self) -> bool:
        return (self.flavour == "gpt2") if self.bias is None else self.bias

    @property
    def mlp_width(self) -> int:
        if self.d_mlp is not None:
            return self.d_mlp
        if self.flavour == "gpt2":
            return 4 * self.d_model
        return 64 * math.ceil(8 * self.d_model / 3 / 64)


@dataclass(frozen=True)
class DataConfig:
    """Where the training tokens are and how they are cut into windows."""

    path: str = "data/shakespeare"
    """A token store written by `cocomix prepare` (train.bin, val.bin, meta.json, tokenizer)."""
    seq_len: int = 256
    """T: tokens per training window. Window c is the c-th non-overlapping chunk of T tokens, shifted by
    `window_offset`."""
    window_offset: str = "random"
    """`random` (the official loader): in every epoch, training window c starts at c·T + r with r drawn uniformly
    from [0, T] (the last window from [0, tokens left after the last chunk]), one stream per (train.seed, epoch);
    `fixed`: r = 0, the same windows every epoch (what cached concept targets need). Validation windows are
    always the fixed chunks."""

    def __post_init__(self) -> None:
        check(isinstance(self.path, str) and self.path != "", "data.path", "a directory path", self.path)
        check(is_int(self.seq_len) and self.seq_len >= 2, "data.seq_len", "an integer >= 2",
               self.seq_len)
        check(self.window_offset in WINDOW_OFFSETS, "data.window_offset", f"one of {WINDOW_OFFSETS}",
               self.window_offset)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop: AdamW, warm-up + cosine schedule, accumulation, clipping, eval and checkpoints."""

    steps: int = 1000
    """Optimizer updates."""
    micro_batch_size: int = 8
    """Windows per forward pass (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer update; the global batch is micro_batch_size · grad_accum · world_size."""
    lr: float = 6e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine decay as a fraction of the peak (paper: 10%)."""
    warmup_steps: int | None = None
    """Linear warm-up from 0; None gives round(steps / 300), the paper's 1/300 of training."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    decay_all_params: bool = True
    """True: one group, decay on every parameter (the official trainer). False: biases and norm weights
    (parameters with fewer than 2 dims) are not decayed."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: str = "auto"
    """`auto` (bf16 autocast on CUDA, fp32 on CPU), `fp32` or `bf16`. fp32 matmuls on CUDA use TF32 (official)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    activation_checkpointing: bool = False
    """Recompute every transformer block's activations in the backward instead of storing them
    (`torch.utils.checkpoint`, non-reentrant; dropout masks replayed): much less activation memory for about one
    more forward of the blocks. Same losses and gradients."""
    chunked_lm_loss: bool = False
    """Compute the student's next-token loss through the LM head in row chunks, its gradients formed in the
    forward (a fused linear cross-entropy, `cocomix.model.chunked_nll`): the (B, T, V) logits and their gradient
    never exist whole; for KD the KL to the teacher too (`chunked_kd`). Same loss up to float rounding; off by
    default (the official trainer's whole logits)."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`."""
    seed: int = 0
    """Seeds init, dropout and the window order."""
    eval_every: int = 200
    """Evaluate validation loss every this many steps (and at the end); 0 disables periodic evaluation."""
    eval_batches: int = 20
    """Validation windows per evaluation, in global batches (micro_batch_size · grad_accum · world_size windows,
    run micro_batch_size at a time), so that splitting the same global batch differently (processes,
    accumulation, a resume on another world size) evaluates the same windows; 0 uses the whole split."""
    save_every: int = 200
    """Write a checkpoint every this many steps (and at the end); 0 saves only at the end."""
    keep_checkpoints: int = 2
    """Keep this many most recent step checkpoints (the final one is always kept)."""
    log_every: int = 10
    """Print a progress line and append to metrics.jsonl every this many steps. The logged loss, concept / KD loss
    and gradient norm are means over the steps since the last log (skipped steps excluded), as the official trainer
    averages over its `log_step_freq`."""
    log_backends: tuple[str, ...] = ()
    """Extra metric sinks: `tensorboard`, `wandb`."""
    parallel: str = "ddp"
    """Under torchrun with several processes: `ddp` (replicated) or `fsdp` (FSDP2, sharded); else unused."""
    fsdp_param_dtype: str = "float32"
    """Under FSDP2 (torchrun, `parallel = fsdp`): the dtype parameters are all-gathered and computed in
    (`MixedPrecisionPolicy.param_dtype`); gradients are reduced in fp32 and the sharded weights and AdamW state stay
    fp32. `float32` (default) leaves the compute precision to autocast, so an FSDP run equals a one-process run;
    `bfloat16` halves the all-gather traffic and is what the official FSDP runs did (their residual stream is then
    bf16 too), and avoids the bf16 copies of the gathered weights that autocast keeps under `float32` (up to the
    whole student's, 2 bytes per parameter, on every GPU). Unused without FSDP."""
    max_bad_steps: int = 10
    """Steps with a non-finite loss or gradient are skipped; this many in a row stop the run."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum", "max_bad_steps", "log_every", "keep_checkpoints"):
            v = getattr(self, name)
            check(is_int(v) and v > 0, f"train.{name}", "a positive integer", v)
        for name in ("eval_every", "eval_batches", "save_every", "seed"):
            v = getattr(self, name)
            check(is_int(v) and v >= 0, f"train.{name}", "a non-negative integer", v)
        check(self.seed < 2**64, "train.seed", "an integer below 2**64 (torch's seed range)", self.seed)
        check(is_num(self.lr) and self.lr > 0, "train.lr", "a finite positive number", self.lr)
        check(is_num(self.min_lr_ratio) and 0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "a value in [0, 1]",
               self.min_lr_ratio)
        check(self.warmup_steps is None or (is_int(self.warmup_steps) and 0 <= self.warmup_steps),
               "train.warmup_steps", "a non-negative integer or null", self.warmup_steps)
        check(is_num(self.beta1) and 0.0 <= self.beta1 < 1.0, "train.beta1", "a value in [0, 1)", self.beta1)
        check(is_num(self.beta2) and 0.0 <= self.beta2 < 1.0, "train.beta2", "a value in [0, 1)", self.beta2)
        check(is_num(self.eps) and self.eps > 0, "train.eps", "a finite positive number", self.eps)
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            check(is_num(v) and v >= 0, f"train.{name}", "a finite non-negative number", v)
        for name in ("decay_all_params", "compile", "activation_checkpointing", "chunked_lm_loss"):
            check(isinstance(getattr(self, name), bool), f"train.{name}", "true or false", getattr(self, name))
        check(self.precision in PRECISIONS, "train.precision", f"one of {PRECISIONS}", self.precision)
        check(isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:(0|[1-9][0-9]*))?", self.device)
               is not None, "train.device", "auto, cpu, cuda or cuda:N", self.device)
        check(self.parallel in ("ddp", "fsdp"), "train.parallel", "ddp or fsdp", self.parallel)
        check(self.fsdp_param_dtype in ("float32", "bfloat16"), "train.fsdp_param_dtype", "float32 or bfloat16",
               self.fsdp_param_dtype)
        check(self.fsdp_param_dtype == "float32" or self.parallel == "fsdp", "train.fsdp_param_dtype",
               "float32 unless train.parallel is fsdp (DDP has no parameter dtype policy)", self.fsdp_param_dtype)
        check(isinstance(self.log_backends, (list, tuple)), "train.log_backends", "a list of backends",
               self.log_backends)
        object.__setattr__(self, "log_backends", tuple(self.log_backends))  # hashable, equal after a JSON round trip
        for b in self.log_backends:
            check(b in LOG_BACKENDS, "train.log_backends", f"entries from {LOG_BACKENDS}", b)
        check(len(set(self.log_backends)) == len(self.log_backends), "train.log_backends", "each backend at most "
               "once", list(self.log_backends))

    @property
    def warmup(self) -> int:
        return round(self.steps / 300) if self.warmup_steps is None else self.warmup_steps


SELECTIONS = ("attribution", "activation")
MULTIPLIERS = ("activation", "pre_activation")
ATTRIBUTION_LOSSES = ("window_mean", "next_token")
GRADIENT_POINTS = ("residual", "reconstruction")
MIXINGS = ("insert", "add", "none")
CONCEPT_TARGETS = ("concepts", "hidden")
HIDDEN_LOSSES = ("l1", "l2", "cosine")
HIDDEN_LOSS_REDUCTIONS = ("sum", "mean")
PAUSE_SLOTS = ("vector", "token")
TEACHER_PRECISIONS = ("fp32", "autocast")
TEACHER_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ConceptConfig:
    """The teacher side and the seam: CoCoMix (concepts), KD (teacher logits) and pause tokens (seam only)."""

    teacher: str = ""
    """Frozen teacher: HF causal LM name or folder, or a cocomix run directory (cocomix and kd)."""
    teacher_layer: int = 5
    """Teacher block whose output the SAE reads (paper: 5 of GPT-2's 12, i.e. the 6th)."""
    sae: str = ""
    """SAE: OpenAI .pt / .safetensors file, SAELens or sparsify folder (cocomix, unless `cache` is set)."""
    sae_k: int | None = None
    """SAE TopK for OpenAI .safetensors files that do not record it."""
    cache: str = ""
    """Concept-target cache from `cocomix extract-concepts`; empty computes targets online every step."""
    n_latents: int = 32768
    """C: concepts predicted by the student; must equal the SAE's width."""
    concept_layer: int = 3
    """Student block whose input predicts the concepts and where the sequence is interleaved (paper: 3 at 69M,
    5 at 386M / 1.38B). Also where pause tokens go."""
    lambda_concept: float = 0.1
    """Weight of the concept loss (Eq. 4); 0 is the mixing-only ablation."""
    k_attr: int = 4
    """Concept targets per position."""
    mix_k: int = 32
    """TopK of the predicted concept logits that are compressed into the concept vector."""
    selection: str = "attribution"
    """`attribution` (the method) or `activation` (§3.3 ablation: the k_attr most active latents). Either way the
    final position is left out of the concept loss (target caches hold T−1 positions), although its activations
    exist: 1/T of the positions, a deviation of the ablation's; CoCoMix training refuses it with
    `mask_last_position` false."""
    multiplier: str = "activation"
    """Attribution multiplier: post-TopK activation (official) or `pre_activation` (paper Eq. 1's multiplier)."""
    attribution_loss: str = "window_mean"
    """Attribution gradient: the window's mean NLL (official) or each position's `next_token` NLL (Eq. 1)."""
    gradient_at: str = "residual"
    """Where the attribution gradient is taken: the teacher's true `residual` stream (official) or, with
    attribution_loss=next_token, the SAE's `reconstruction` D(c_t) with the teacher run from it at position t
    (Eq. 1 as written). Eq. 1 entire: multiplier=pre_activation, attribution_loss=next_token,
    gradient_at=reconstruction."""
    mixing: str = "insert"
    """`insert` the concept vector after each token (the method), `add` it to the hidden state (ablation) or
    `none` (concept prediction only, ablation)."""
    target: str = "concepts"
    """`concepts` (SAE targets, the method) or `hidden` (ablation: regress the teacher's normalised hidden state
    at teacher_layer with a 2-layer MLP, then compress and mix it the same way)."""
    hidden_loss: str = "l2"
    """Loss of the `hidden` ablation: `l1`, `l2` or `cosine` (1 − cosine similarity), averaged over positions."""
    hidden_loss_reduction: str = "sum"
    """How `l1` / `l2` reduce over the d_con dimensions of a position: `sum` (the paper's ‖h^con − g(h)‖²₂ and
    ‖·‖₁) or `mean` (mean absolute / squared error: 1/d_con of the paper's scale at the same λ)."""
    teacher_precision: str = "fp32"
    """How the frozen teacher and SAE compute during training: `fp32` (the official code: outside the training
    autocast, TF32 matmuls on CUDA; the same numbers as `extract-concepts`) or `autocast` (inside the training
    autocast, e.g. bf16 on GPUs: faster, its targets differ from fp32 ones by rounding)."""
    teacher_dtype: str = "float32"
    """Dtype the teacher's weights are loaded in: `float32` (the official code) or `bfloat16` (half the memory, for
    large teachers; its residual, gradients and hence targets are computed in bf16, a deviation). The SAE stays
    in its file's dtype."""
    d_teacher: int = 768
    """Teacher residual width (needed to build the `hidden` ablation's predictor)."""
    mask_last_position: bool = True
    """Leave the final position out of the concept loss (it has no next token, so no attribution). False is the
    official code, which trains it towards the topk of an all-zero row (arbitrary ids there; here {0, …, k_attr−1},
    what a CPU topk returns)."""
    lambda_kd: float = 0.1
    """Weight of KL(teacher ‖ student) for the KD baseline."""
    pause_slot: str = "vector"
    """Pause slots: `vector`, one learned vector after every token (the paper's "learnable pause token"), or
    `token`, that vector added to a copy of the token's hidden state (same computation as CoCoMix's slot, no
    teacher information; used by `tiny-pause`, where the bare vector stays at the unigram plateau)."""

    def __post_init__(self) -> None:
        for name in ("teacher", "sae", "cache"):  # (a Path is no JSON: config.json could not be written)
            check(isinstance(getattr(self, name), str), f"concept.{name}", "a string (a path or hub name; '' for "
                   "none)", getattr(self, name))
        for name in ("n_latents", "k_attr", "mix_k", "d_teacher"):
            v = getattr(self, name)
            check(is_int(v) and v > 0, f"concept.{name}", "a positive integer", v)
        for name in ("teacher_layer", "concept_layer"):
            v = getattr(self, name)
            check(is_int(v) and v >= 0, f"concept.{name}", "a non-negative integer", v)
        check(self.sae_k is None or (is_int(self.sae_k) and self.sae_k > 0), "concept.sae_k",
               "a positive integer or null", self.sae_k)
        check(self.mix_k <= self.n_latents, "concept.mix_k", f"at most n_latents={self.n_latents}", self.mix_k)
        check(self.k_attr <= self.n_latents, "concept.k_attr", f"at most n_latents={self.n_latents}", self.k_attr)
        for name in ("lambda_concept", "lambda_kd"):
            v = getattr(self, name)
            check(is_num(v) and v >= 0, f"concept.{name}", "a finite number >= 0", v)
        check(isinstance(self.mask_last_position, bool), "concept.mask_last_position", "true or false",
               self.mask_last_position)
        for name, allowed in (("selection", SELECTIONS), ("multiplier", MULTIPLIERS),
                              ("attribution_loss", ATTRIBUTION_LOSSES), ("gradient_at", GRADIENT_POINTS),
                              ("mixing", MIXINGS),
                              ("target", CONCEPT_TARGETS), ("hidden_loss", HIDDEN_LOSSES),
                              ("hidden_loss_reduction", HIDDEN_LOSS_REDUCTIONS),
                              ("pause_slot", PAUSE_SLOTS), ("teacher_precision", TEACHER_PRECISIONS),
                              ("teacher_dtype", TEACHER_DTYPES)):
            check(getattr(self, name) in allowed, f"concept.{name}", f"one of {allowed}", getattr(self, name))
        if self.selection == "activation":
            check((self.multiplier, self.attribution_loss, self.gradient_at) == ("activation", "window_mean",
                                                                                  "residual"),
                   "concept.selection", "'attribution' with multiplier / attribution_loss / gradient_at options "
                   "(selection=activation takes the most active latents, no attribution)", self.selection)
        if self.gradient_at == "reconstruction":
            check(self.attribution_loss == "next_token" and self.selection == "attribution", "concept.gradient_at",
                   "'residual' unless attribution_loss=next_token and selection=attribution (Eq. 1 runs the teacher "
                   "from D(c_t) for position t's own loss)", self.gradient_at)


@dataclass(frozen=True)
class RunConfig:
    """One training run: which method trains which model on which data, and how."""

    method: str = "ntp"
    """Training method, a key of `cocomix.methods.METHODS` (built in, or another package's `cocomix.methods`
    entry point: `methods/plugins.py`)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)

    def __post_init__(self) -> None:
        from cocomix.methods import METHODS, PAUSING
        from cocomix.methods.plugins import load_method_plugins

        for f in dataclasses.fields(self)[1:]:  # the sections, each of its own class (library callers)
            check(isinstance(getattr(self, f.name), f.default_factory), f.name, f"a {f.default_factory.__name__}",
                   type(getattr(self, f.name)).__name__)
        if self.method not in METHODS:  # another package's method (a `cocomix.methods` entry point)
            load_method_plugins(METHODS)
        check(self.method in METHODS, "method", f"one of {sorted(METHODS)} (or a `cocomix.methods` entry point)",
               self.method)
        if self.method == "cocomix" or self.method in PAUSING:
            check(0 < self.concept.concept_layer < self.model.n_layer, "concept.concept_layer",
                   f"a block index in [1, {self.model.n_layer - 1}] (model.n_layer={self.model.n_layer})",
                   self.concept.concept_layer)
        c = self.concept  # (other methods ignore the concept section, cache included: NTP baselines copy it)
        reads_cache = self.method == "cocomix" and c.target == "concepts" and c.lambda_concept > 0
        check(not (c.cache and self.method == "cocomix" and not reads_cache), "concept.cache", "empty with "
               "concept.target=hidden or concept.lambda_concept=0 (no concept targets are read: the cache would be "
               "ignored)", c.cache)
        check(not (c.cache and reads_cache and self.data.window_offset != "fixed"),
               "data.window_offset", "'fixed' with concept.cache (cached targets belong to the fixed windows; "
               "random crops need online targets)", self.data.window_offset)
        check(self.data.seq_len <= self.model.context_length, "data.seq_len",
               f"at most model.context_length={self.model.context_length}", self.data.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
