"""Exporting trained models to other ecosystems: Hugging Face `transformers` GPT-2 / Llama folders and back."""

from cocomix.export.hf import export_hf, hf_config, hf_state_dict
from cocomix.export.hf_import import load_hf_weights, model_config_from_hf

__all__ = ["export_hf", "hf_config", "hf_state_dict", "load_hf_weights", "model_config_from_hf"]
