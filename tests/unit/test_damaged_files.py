"""Files a crash, a full disk or a hand edit has damaged: every reader answers with a one-line error naming the
file (or skips what it documents as skippable), never a traceback, and no value of the wrong type is converted into
another model or run than the file's."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from cocomix import json_text
from cocomix.config import ModelConfig
from cocomix.errors import CheckpointError, CheckpointWriteError, CocomixError
from cocomix.model.transformer import Transformer
from cocomix.presets import gpt2_69m_ntp

SRC = Path(__file__).resolve().parents[2] / "src" / "cocomix"
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser recurses


def test_json_nested_too_deep_is_a_value_error_and_every_file_reader_parses_through_it() -> None:
    """`json_text.loads` keeps one `except ValueError` enough; a file read parsed with the bare `json.loads` would
    let a RecursionError through as a traceback."""
    assert json_text.loads('{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(RecursionError):
        json.loads(DEEP)
    with pytest.raises(ValueError, match="nested too deeply"):
        json_text.loads(DEEP)
    bare = [f"{p.relative_to(SRC)}:{i}" for p in sorted(SRC.rglob("*.py")) if p.name != "json_text.py"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bjson\.loads\(.*read_text\(", line)]
    assert bare == []


def test_files_nested_too_deep_are_one_line_errors(tmp_path: Path) -> None:
    from cocomix.export.hf_import import model_config_from_hf
    from cocomix.sae._io import read_json
    from cocomix.train.checkpoint import read_run_config, read_state
    from cocomix.train.metrics import MetricsLogger

    (tmp_path / "cfg.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match=r"cfg\.json: not valid JSON \(expected an SAE config\): JSON nested"):
        read_json(tmp_path / "cfg.json", "an SAE config")
    for folder, call, said in [("run", read_run_config, r"config\.json: not valid JSON"),
                               ("step_0000003", read_state, r"state\.json: unreadable \(JSON nested"),
                               ("hf", model_config_from_hf, r"config\.json: not valid JSON \(JSON nested")]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / ("state.json" if call is read_state else "config.json")).write_text(DEEP)
        with pytest.raises(CheckpointError, match=said):
            call(tmp_path / folder)
    # a resume drops the damaged line with the lines past the step it resumes from
    log = tmp_path / "log"
    log.mkdir()
    (log / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n' + DEEP + "\n" + '{"step": "5"}\n'
                                       '{"step": true}\n{"step": 2}\n')
    MetricsLogger(log, resume_step=1, quiet=True).close()
    assert (log / "metrics.jsonl").read_text() == '{"kind": "train", "step": 1}\n'


def test_an_sae_training_config_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    from cocomix.sae.train_config import SAETrainConfig
    from cocomix.sae.training import check_out

    cfg = SAETrainConfig(teacher="teacher", teacher_layer=1, data="store", seq_len=32, n_latents=128, k=4)
    (tmp_path / "config.json").write_bytes(b'\xff\xfe"auxk_alpha"')
    (tmp_path / "metrics.jsonl").write_text("")  # (with config.json: what an SAE run not finished yet holds)
    with pytest.raises(CocomixError, match=r"config\.json: unreadable SAE training config"):
        check_out(cfg, tmp_path)


def _hf_config(folder: Path, **fields: object) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


@pytest.mark.parametrize(("fields", "said"), [
    ({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 0}, "num_attention_heads: expected an "
                                                                           "integer >= 1, got 0"),
    ({"model_type": "gpt2", "tie_word_embeddings": "false"}, "tie_word_embeddings: expected true or false, got "
                                                             "'false'"),
    ({"model_type": "llama", "attention_bias": 0, "mlp_bias": 0}, "attention_bias: expected true or false, got 0"),
    ({"model_type": "gpt2", "layer_norm_epsilon": True}, "layer_norm_epsilon: expected a number, got True"),
    ({"model_type": "llama", "rope_theta": True}, "rope_theta: expected a number, got True"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}},
     "rope_theta: expected a number, got '1e4'"),
    ({"model_type": "gpt2", "n_embd": 32.9}, "n_embd: expected an integer, got 32.9"),
    ({"model_type": "gpt2", "vocab_size": None}, "vocab_size: expected an integer, got None"),
    ({"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": "4"},
     "num_key_value_heads: expected an integer, got '4'"),
])
def test_hf_config_fields_of_the_wrong_type_are_refused_not_converted(tmp_path: Path, fields: dict,
                                                                      said: str) -> None:
    from cocomix.export.hf_import import model_config_from_hf

    with pytest.raises(CheckpointError, match=r"config\.json: " + re.escape(said)):
        model_config_from_hf(_hf_config(tmp_path / "hf", **fields))


def test_hf_config_nulls_that_transformers_writes_read_as_the_defaults(tmp_path: Path) -> None:
    from cocomix.export.hf_import import model_config_from_hf

    cfg = model_config_from_hf(_hf_config(tmp_path / "hf", model_type="llama", hidden_size=64,
                                          num_attention_heads=4, num_key_value_heads=None, head_dim=None,
                                          pretraining_tp=None, attention_dropout=None, rope_theta=500,
                                          intermediate_size=96, num_hidden_layers=2, vocab_size=50))
    assert (cfg.d_model, cfg.n_head, cfg.dropout, cfg.rope_theta, cfg.n_layer) == (64, 4, 0.0, 500.0, 2)


def test_a_run_config_with_a_null_section_is_refused_not_read_as_defaults(tmp_path: Path) -> None:
    from cocomix.train.checkpoint import read_run_config

    data = json.loads(gpt2_69m_ntp().to_json())
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_run_config(tmp_path).model.d_model == 624
    for section in ("model", "train", "data", "method"):
        (tmp_path / "config.json").write_text(json.dumps({**data, section: None}))
        with pytest.raises(CheckpointError, match=rf"config\.json: no {section} section; the run wrote every"):
            read_run_config(tmp_path)


@pytest.mark.parametrize("interval", [{"sums": {"loss": 1.0}}, {"count": "2", "sums": {}}, {"count": -1, "sums": {}},
                                      {"count": 2, "sums": {"loss": "1.0"}}, {"count": 2, "sums": {"loss": True}},
                                      {"count": 2, "sums": []}])
def test_a_state_json_with_an_interval_the_loop_cannot_read_is_damaged(tmp_path: Path, interval: dict) -> None:
    from cocomix.train.checkpoint import read_state

    ckpt = tmp_path / "step_0000003"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "log_interval": {"count": 2, "sums": {"loss": 1.5}}}))
    assert read_state(ckpt)["log_interval"]["count"] == 2
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "log_interval": interval}))
    with pytest.raises(CheckpointError, match=r"state\.json: log_interval is .* the checkpoint is damaged"):
        read_state(ckpt)


def test_a_full_disk_under_safetensors_writer_is_a_checkpoint_write_error(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors reports ENOSPC as a SafetensorError (not an OSError): the checkpoint and the export say it
    as one line and leave no half-written folder."""
    import safetensors.torch

    import cocomix.train.checkpoint as ck
    from cocomix.export.hf import export_hf

    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    model = torch.nn.Linear(4, 4)
    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(CheckpointWriteError, match=r"step_0000001: cannot write the checkpoint \(Error while "
                                                   r"serializing: I/O error: No space left .*free space and rerun"):
        ck.save_checkpoint(tmp_path / "run", 1, model, torch.optim.SGD(model.parameters(), lr=0.1), {}, keep=2)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == []
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cfg = ModelConfig(flavour="gpt2", vocab_size=50, n_layer=1, n_head=2, d_model=16, context_length=16)
    with pytest.raises(CheckpointError, match=r"hf: export failed \(Error while serializing: I/O error: No space"):
        export_hf(Transformer(cfg), tmp_path / "new" / "hf")
    assert not (tmp_path / "new").exists()


def test_a_memory_mapped_file_is_allocated_before_it_is_written(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A sparse file written through a memory map dies of SIGBUS when the disk fills; `reserve_file` allocates
    the blocks first, so a full disk is an OSError naming the file, and a file system that cannot reserve keeps
    the sparse file it can."""
    import cocomix.atomic as atomic

    path = tmp_path / "targets.bin"
    atomic.reserve_file(path, 1 << 20)
    assert path.stat().st_size == 1 << 20
    if hasattr(os, "posix_fallocate"):
        assert path.stat().st_blocks * 512 >= 1 << 20  # allocated, not a hole
    path.write_bytes(b"x" * 10)
    atomic.reserve_file(path, 4)  # (never shrinks what is there)
    assert path.read_bytes() == b"x" * 10

    def refuse(code: int):  # noqa: ANN202
        def fallocate(fd: int, offset: int, length: int) -> None:
            raise OSError(code, os.strerror(code))
        return fallocate

    monkeypatch.setattr(os, "posix_fallocate", refuse(errno.ENOSPC), raising=False)
    with pytest.raises(OSError, match=r"No space left on device: '.*big\.bin'") as info:
        atomic.reserve_file(tmp_path / "big.bin", 1 << 20)
    assert info.value.filename == str(tmp_path / "big.bin")
    monkeypatch.setattr(os, "posix_fallocate", refuse(errno.EOPNOTSUPP), raising=False)
    atomic.reserve_file(tmp_path / "sparse.bin", 1 << 20)
    assert (tmp_path / "sparse.bin").stat().st_size == 1 << 20


def test_the_demo_reads_a_target_cache_meta_that_is_no_object_as_not_complete(tmp_path: Path) -> None:
    from cocomix.demo import _cache_complete

    for text, complete in (('{"complete": true}', True), ('{"complete": false}', False), ("[]", False),
                           ("null", False), (DEEP, False), ("{", False)):
        (tmp_path / "meta.json").write_text(text)
        assert _cache_complete(tmp_path) is complete, text
    (tmp_path / "meta.json").write_bytes(b"\xff")
    assert _cache_complete(tmp_path) is False
