"""The student model: transformer (gpt2 / llama flavours), attention with KV cache, slot seam, generation."""

from cocomix.model.attention import KVCache
from cocomix.model.generate import generate, sample_next
from cocomix.model.generate_ragged import generate_ragged
from cocomix.model.seam import Seam, interleave, read_slots
from cocomix.model.transformer import ModelOutput, Transformer

__all__ = ["KVCache", "ModelOutput", "Seam", "Transformer", "generate", "generate_ragged", "interleave", "read_slots",
           "sample_next"]
