"""Loading a frozen teacher (`cocomix.teacher.Teacher`) by name or path: a cocomix run or checkpoint folder, a local
Hugging Face model folder, or a hub name (`AutoModelForCausalLM.from_pretrained`; never reached in tests or the
demo, which give local folders). A path that names nothing local is said before the hub's retries, and a folder
that holds some other cocomix output (a token store, an SAE) is named as such rather than left to transformers'
error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cocomix.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from cocomix.teacher import Teacher


def load_teacher(cls: type[Teacher], name_or_path: str | Path, layer: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, layer_field: str = "teacher_layer") -> Teacher:
    """A `cls` (Teacher) capturing at block `layer` of the model `name_or_path` names (a cocomix run/checkpoint
    directory: one holding `checkpoints/` or `state.json`; else an HF causal LM folder or hub name), its tokenizer
    source recorded for the store check; `layer_field` names the setting that gave `layer`, for errors."""
    text = str(name_or_path)
    local = text.startswith((".", "~")) or Path(text).is_absolute() or text.count("/") > 1  # never a hub id
    path = Path(text).expanduser()
    name_or_path = str(path) if local else text
    if local and not path.exists():
        raise CheckpointError(f"{name_or_path}: no such folder (a teacher is a cocomix run, a local Hugging "
                              "Face model folder or a hub name)")
    owner = text.partition("/")[0]
    # `runs/teach` next to a local runs/ folder is likely a mistyped path, but a hub owner's name may be a local
    # folder too (models downloaded by owner/name): said now, before the hub's retries, and in the error
    from cocomix.outputs import workspace

    typo = (f" (and no local folder {text}, though {owner}/ is one here: a mistyped path?)"
            if not local and "/" in text and owner and Path(owner).is_dir() and not path.exists() else "")
    if typo and workspace(Path(owner)):  # cocomix outputs, not models kept by owner/name: no hub retries
        raise CheckpointError(f"{text}: no such folder, and {owner}/ here holds cocomix outputs (a mistyped "
                              "path?); a teacher is a cocomix run, a local Hugging Face model folder or a hub name")
    if typo:
        print(f"cocomix: note: teacher {text}: no such local folder, though {owner}/ is one here; reading it as "
              "a Hugging Face hub name", file=sys.stderr)
    if (path / "checkpoints").is_dir() or (path / "state.json").is_file():
        from cocomix.runs import load_run

        run, _, model, ckpt = load_run(path, device=device)
        teacher = cls(model.to(dtype), layer, layer_field)
        teacher.tokenizer_source = ("run", ckpt)
        teacher.run = run
        return teacher
    from cocomix.outputs import RUN, output_kind

    if output_kind(path) == RUN:  # a run's config.json and metrics, no checkpoint: not for transformers to read
        raise CheckpointError(f"{name_or_path}: holds a cocomix run with no checkpoint yet; give it once it has "
                              "saved one (train.save_every), or another teacher")
    if path.is_dir() and not (path / "config.json").is_file():  # not a model: say what is, not transformers'
        kind = output_kind(path)
        inside = sorted(p.parent.name for p in path.glob("*/config.json"))[:5]
        raise CheckpointError(f"{name_or_path}: " + (f"holds {kind}, not a teacher" if kind else
                                                     "neither a cocomix run nor a model folder (no config.json)")
                              + (f"; its subfolders {', '.join(inside)} have a config.json" if inside else ""))
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ConfigError("teacher: loading a Hugging Face teacher needs transformers (pip install "
                          "transformers)") from None
    try:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # our commands report progress themselves; keep stderr readable
        try:
            model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, a damaged safetensors header, an unpickling error
        raise CheckpointError(f"{name_or_path}: cannot load a causal LM teacher ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}){typo}") from None
    teacher = cls(model.to(device), layer, layer_field)
    teacher.tokenizer_source = ("hf", path) if local or path.is_dir() else ("hub", text)
    return teacher
