"""The student model: transformer (gpt2 / llama flavours), attention with KV cache, slot seam, generation; the
concept seams (`concept.py`, paper Eq. 2–4) and their fused head (`concept_head.py`), the chunked LM-head loss
(`chunked_nll.py`) and the own-position attention behind the teacher's Eq. 1 gradient (`own_position.py`)."""

from cocomix.model.attention import KVCache
from cocomix.model.generate import generate, sample_next
from cocomix.model.generate_ragged import generate_ragged
from cocomix.model.seam import Seam, interleave, read_slots
from cocomix.model.transformer import ModelOutput, Transformer

__all__ = ["KVCache", "ModelOutput", "Seam", "Transformer", "generate", "generate_ragged", "interleave", "read_slots",
           "sample_next"]
