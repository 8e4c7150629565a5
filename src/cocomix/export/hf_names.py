"""Hugging Face tensor names, shapes and file names for the gpt2 and llama flavours (shared by export/import).

Ours: `nn.Linear` (out, in) everywhere, attention `qkv` fused as rows [q; k; v] with heads contiguous in each.
HF GPT-2 uses `Conv1D` (in, out), so every block Linear weight is transposed and `c_attn` is the transposed
fused qkv. HF Llama keeps (out, in) with separate `q_proj` / `k_proj` / `v_proj`; our RoPE is already in its
rotate-half convention, so no row permutation is needed.

No paper equation.
"""

from __future__ import annotations

import re

import torch

from cocomix.config import ModelConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
"""HF activation names that are the tanh-approximated GELU our gpt2 flavour uses."""
IGNORED_HF_KEYS = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$|rotary_emb\.inv_freq$")
"""Non-parameter buffers some HF checkpoints carry (GPT-2 causal-mask buffers, old Llama RoPE tables)."""


# ----------------------------------------------------------------------------------------------------------
# Names: one table per flavour from HF tensor name to (our name, how to convert).


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """HF tensor name -> our parameter name, for every tensor except Llama's split q/k/v projections."""
    m: dict[str, str] = {}
    if cfg.flavour == "gpt2":
        m["transformer.wte.weight"] = "wte.weight"
        m["transformer.wpe.weight"] = "wpe.weight"
        for i in range(cfg.n_layer):
            h, b = f"transformer.h.{i}", f"blocks.{i}"
            for hf, ours in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.c_attn", "attn.qkv"),
                             ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "mlp.fc"),
                             ("mlp.c_proj", "mlp.proj")):
                m[f"{h}.{hf}.weight"] = f"{b}.{ours}.weight"
                m[f"{h}.{hf}.bias"] = f"{b}.{ours}.bias"
        m["transformer.ln_f.weight"] = "ln_f.weight"
        m["transformer.ln_f.bias"] = "ln_f.bias"
    else:
        m["model.embed_tokens.weight"] = "wte.weight"
        for i in range(cfg.n_layer):
            h, b = f"model.layers.{i}", f"blocks.{i}"
            m[f"{h}.input_layernorm.weight"] = f"{b}.ln_1.weight"
            m[f"{h}.post_attention_layernorm.weight"] = f"{b}.ln_2.weight"
            for hf, ours in (("self_attn.o_proj", "attn.proj"), ("mlp.gate_proj", "mlp.gate"),
                             ("mlp.up_proj", "mlp.up"), ("mlp.down_proj", "mlp.proj")):
                m[f"{h}.{hf}.weight"] = f"{b}.{ours}.weight"
                m[f"{h}.{hf}.bias"] = f"{b}.{ours}.bias"
        m["model.norm.weight"] = "ln_f.weight"
    m["lm_head.weight"] = "lm_head.weight"
    return m


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> its shape in an HF folder for `cfg` (biases included whether or not we have them)."""
    V, d, m, C = cfg.vocab_size, cfg.d_model, cfg.mlp_width, cfg.context_length
    s: dict[str, tuple[int, ...]] = {"lm_head.weight": (V, d)}
    if cfg.flavour == "gpt2":
        s.update({"transformer.wte.weight": (V, d), "transformer.wpe.weight": (C, d),
                  "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}"
            for ln in ("ln_1", "ln_2"):
                s[f"{h}.{ln}.weight"] = s[f"{h}.{ln}.bias"] = (d,)
            for mod, n_in, n_out in (("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, m),
                                     ("mlp.c_proj", m, d)):
                s[f"{h}.{mod}.weight"], s[f"{h}.{mod}.bias"] = (n_in, n_out), (n_out,)  # Conv1D (in, out)
    else:
        s.update({"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)})
        for i in range(cfg.n_layer):
            h = f"model.layers.{i}"
            s[f"{h}.input_layernorm.weight"] = s[f"{h}.post_attention_layernorm.weight"] = (d,)
            for mod, n_in, n_out in (("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d),
                                     ("self_attn.v_proj", d, d), ("self_attn.o_proj", d, d),
                                     ("mlp.gate_proj", d, m), ("mlp.up_proj", d, m), ("mlp.down_proj", m, d)):
                s[f"{h}.{mod}.weight"], s[f"{h}.{mod}.bias"] = (n_out, n_in), (n_out,)  # Linear (out, in)
    return s


def gpt2_transposed(hf_name: str) -> bool:
    """GPT-2 Conv1D weights are stored (in, out): every 2-D block weight (not embeddings, not lm_head)."""
    return hf_name.startswith("transformer.h.") and hf_name.endswith(".weight") and ".ln_" not in hf_name


def fresh_tensor(t: torch.Tensor) -> torch.Tensor:
    """A contiguous fp32 CPU copy that shares no storage (safetensors refuses shared or strided tensors)."""
    return t.detach().to(device="cpu", dtype=torch.float32).clone(memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------------------------
# Export.
