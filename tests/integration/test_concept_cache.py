"""Concept-target cache: cached targets equal online ones, interruption resumes exactly, mismatches refused."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cocomix.concepts import compute_targets
from cocomix.concepts.cache import TargetCache, extract_concepts
from cocomix.config import ModelConfig
from cocomix.data import TokenStore
from cocomix.errors import ConfigError, DataError
from cocomix.export import export_hf
from cocomix.model import Transformer
from cocomix.sae import TopKSAE, load_sae
from cocomix.sae.fit import sae_fvu
from cocomix.sae.saelens import save_saelens
from cocomix.teacher import Teacher
from tests.cli import run_cli


@pytest.fixture(scope="module")
def parts(concept_parts: tuple[Path, Path]) -> tuple[Path, Path]:
    return concept_parts


def _extract(store: Path, out: Path, parts: tuple[Path, Path], **kw) -> dict:
    teacher = Teacher.from_pretrained(parts[0], layer=1)
    sae = load_sae(str(parts[1]))
    return extract_concepts(store, out, teacher, sae, teacher_spec=str(parts[0]), sae_spec=str(parts[1]),
                            seq_len=32, batch_size=4, progress=False, **kw)


@pytest.fixture(scope="module")
def full_cache(store_dir: Path, parts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted extraction of both splits, read (never written) by the tests that need a complete one."""
    out = tmp_path_factory.mktemp("cache") / "full"
    _extract(store_dir, out, parts)
    return out


def test_cached_targets_equal_online_targets(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path]) -> None:
    r = run_cli("extract-concepts", "--data", str(store_dir),
                "--teacher", str(parts[0]), "--teacher-layer", "1", "--sae", str(parts[1]),
                "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    cache = TargetCache.open(tmp_path / "c", expect={"k_attr": 4, "seq_len": 32})
    summary = json.loads(r.stdout)  # the windows extracted, per split
    assert summary["complete"] and summary["windows"] == cache.meta["windows"] and len(summary["windows"]) == 2
    r = run_cli("extract-concepts", "--data", str(store_dir), "--teacher", str(parts[0]), "--teacher-layer", "1",
                "--sae", str(parts[1]), "--seq-len", "32", "--device", "cpu", "--splits", "train",
                "--out", str(tmp_path / "t"))
    assert json.loads(r.stdout)["windows"] == {"train": cache.meta["windows"]["train"]}  # val was not asked for
    assert cache.meta["dtype"] == "uint16"
    teacher = Teacher.from_pretrained(parts[0], layer=1)
    assert cache.meta["teacher_shape"]["d_model"] == 32 and len(cache.meta["teacher_shape"]["block_params"]) == len(
        teacher.blocks)  # what a run reading the cache is charged (cocomix.train.setup.flops_per_token)
    store = TokenStore.open(store_dir)
    teacher, sae = Teacher.from_pretrained(parts[0], layer=1), load_sae(str(parts[1]))
    for split, chunk_ids in (("train", [0, 5, 17, 3]), ("val", [0, 1])):
        online = compute_targets(teacher, sae, store.batch(split, chunk_ids, 32), k_attr=4)
        assert torch.equal(cache.batch(split, chunk_ids), online)


def test_interrupted_extraction_resumes_to_identical_files(store_dir: Path, tmp_path: Path,
                                                           parts: tuple[Path, Path], full_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import cocomix.concepts.cache as cache_module

    partial = _extract(store_dir, tmp_path / "resumed", parts, max_windows=7)
    assert not partial["complete"]
    with pytest.raises(DataError, match="incomplete"):
        TargetCache.open(tmp_path / "resumed")
    rows: list[int] = []  # windows the resumed extraction computes targets for

    def counted(teacher: Teacher, sae: TopKSAE, ids: torch.Tensor, **kw: object) -> torch.Tensor:
        rows.append(ids.shape[0])
        return compute_targets(teacher, sae, ids, **kw)

    monkeypatch.setattr(cache_module, "compute_targets", counted)
    meta = _extract(store_dir, tmp_path / "resumed", parts)
    assert meta["complete"] and sum(rows) == sum(meta["windows"].values()) - 7  # none of the first 7 again
    for split in ("train", "val"):
        name = f"targets_{split}.bin"
        assert (full_cache / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()


def test_a_resume_from_moved_parts_keeps_what_made_the_targets(store_dir: Path, tmp_path: Path,
                                                              parts: tuple[Path, Path], full_cache: Path) -> None:
    """The teacher and SAE copied elsewhere (matched by content) finish an interrupted extraction; meta.json still
    names what made the targets, so the cache's fingerprint — which runs trained from it record — is the one an
    uninterrupted extraction gives."""
    moved = (tmp_path / "teacher", tmp_path / "sae")
    shutil.copytree(parts[0], moved[0])
    shutil.copytree(parts[1], moved[1]) if parts[1].is_dir() else shutil.copyfile(parts[1], moved[1])
    _extract(store_dir, tmp_path / "c", parts, max_windows=7)
    meta = _extract(store_dir, tmp_path / "c", moved)
    assert meta["complete"] and (meta["teacher"], meta["sae"]) == (str(parts[0]), str(parts[1]))
    assert TargetCache.open(tmp_path / "c").fingerprint() == TargetCache.open(full_cache).fingerprint()


def test_a_resume_never_fills_counted_windows_with_zeros(store_dir: Path, tmp_path: Path,
                                                         parts: tuple[Path, Path], full_cache: Path) -> None:
    """progress.json counts windows done: without meta.json the extraction starts again from window 0 (not from
    the old count over a new zero-filled file); a targets file missing or cut short under a count is refused."""
    from cocomix.errors import CheckpointError

    _extract(store_dir, tmp_path / "a", parts, max_windows=7)
    (tmp_path / "a" / "meta.json").unlink()
    meta = _extract(store_dir, tmp_path / "a", parts)
    assert meta["complete"]
    for split in ("train", "val"):  # all computed again: the same bytes as an uninterrupted extraction
        name = f"targets_{split}.bin"
        assert (full_cache / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    _extract(store_dir, tmp_path / "b", parts, max_windows=7)
    (tmp_path / "b" / "targets_train.bin").unlink()
    with pytest.raises(CheckpointError, match=r"targets_train\.bin: progress\.json counts 7 train windows done, "
                                              r"but the file is missing; delete the cache folder"):
        _extract(store_dir, tmp_path / "b", parts)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "meta.json").write_text("[]")  # valid JSON, not an object
    with pytest.raises(DataError, match=r"meta\.json: expected a JSON object"):
        TargetCache.open(tmp_path / "c")


def test_a_resumed_run_takes_a_copy_of_its_cache_but_not_another_sae_s(
        store_dir: Path, tmp_path: Path, parts: tuple[Path, Path], full_cache: Path) -> None:
    """A cache-only run (no teacher, no SAE named: nothing else to compare) records what made its targets in every
    checkpoint: a resume may read a copy of the cache elsewhere, not targets of another SAE."""
    from cocomix.config import ConceptConfig, DataConfig, RunConfig, TrainConfig
    from cocomix.errors import CheckpointError, CocomixWarning
    from cocomix.train import train

    other_sae = tmp_path / "other-sae"
    torch.manual_seed(3)
    sae = TopKSAE(32, 256, 8)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.3)
    save_saelens(sae, other_sae)
    _extract(store_dir, tmp_path / "other-cache", (parts[0], other_sae))
    shutil.copytree(full_cache, tmp_path / "copy")

    def run(cache: Path, steps: int) -> RunConfig:
        return RunConfig(method="cocomix", model=ModelConfig(vocab_size=320, n_layer=4, n_head=2, d_model=32,
                                                             context_length=64),
                         data=DataConfig(path=str(store_dir), seq_len=32, window_offset="fixed"),
                         train=TrainConfig(steps=steps, micro_batch_size=2, eval_every=0, save_every=2,
                                           warmup_steps=1, device="cpu"),
                         concept=ConceptConfig(teacher="", teacher_layer=1, sae="", n_latents=256, k_attr=4,
                                               mix_k=8, concept_layer=2, cache=str(cache)))

    train(run(full_cache, 2), tmp_path / "r", quiet=True)
    (tmp_path / "r" / "config.json").write_text(run(full_cache, 6).to_json())  # (cut at step 2 of 6)
    with pytest.raises(CheckpointError, match=r"^concept\.cache: .*other-cache' holds another cache than the one"):
        train(run(tmp_path / "other-cache", 6), tmp_path / "r", resume=True, quiet=True)
    assert train(run(tmp_path / "copy", 6), tmp_path / "r", resume=True, quiet=True).steps == 6
    # a teacher precision for online targets is said to be unused, not silently dropped
    autocast = run(full_cache, 1)
    autocast = dataclasses.replace(autocast, concept=dataclasses.replace(autocast.concept,
                                                                       teacher_precision="autocast"))
    with pytest.warns(CocomixWarning, match=r"concept\.teacher_precision=autocast: unused with concept\.cache"):
        train(autocast, tmp_path / "r-autocast", quiet=True)


def test_completeness_is_per_split(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path]) -> None:
    """A train extraction stopped partway and then a val-only one: the cache is not complete (the rest of the
    train file is zero-filled), and a split never extracted cannot be read."""
    _extract(store_dir, tmp_path / "c", parts, splits=("train",), max_windows=3)
    meta = _extract(store_dir, tmp_path / "c", parts, splits=("val",))
    assert meta["complete_splits"] == ["val"] and not meta["complete"]
    with pytest.raises(DataError, match="train split is incomplete"):
        TargetCache.open(tmp_path / "c")
    _extract(store_dir, tmp_path / "v", parts, splits=("val",))  # never a train split: said so
    with pytest.raises(DataError, match="v: holds no train targets .* --splits train"):
        TargetCache.open(tmp_path / "v")
    with pytest.raises(DataError, match="holds a token store, not a concept cache"):
        TargetCache.open(store_dir)
    _extract(store_dir, tmp_path / "d", parts, splits=("train",))
    cache = TargetCache.open(tmp_path / "d")
    assert cache.batch("train", [0]).shape == (1, 32, 4)
    with pytest.raises(DataError, match="no complete val targets"):
        cache.batch("val", [0])


def test_a_run_with_another_teacher_layer_or_sae_is_refused_the_cache(store_dir: Path, tmp_path: Path,
                                                                      parts: tuple[Path, Path],
                                                                      full_cache: Path) -> None:
    """A run reading a cache must have the teacher (by its weights), teacher layer, SAE (by content) and SAE k the
    cache was made with."""
    import dataclasses

    from cocomix.config import ConceptConfig, DataConfig, RunConfig
    from cocomix.methods.cocomix import open_cache

    run = RunConfig(method="cocomix", model=ModelConfig(vocab_size=320, n_layer=4, n_head=2, d_model=32,
                                                        context_length=64),
                    data=DataConfig(path=str(store_dir), seq_len=32, window_offset="fixed"),
                    concept=ConceptConfig(teacher=str(parts[0]), teacher_layer=1, sae=str(parts[1]), n_latents=256,
                                          k_attr=4, concept_layer=2, cache=str(full_cache)))
    store = TokenStore.open(store_dir)
    assert open_cache(str(full_cache), run, store).meta["teacher_layer"] == 1
    moved = tmp_path / "elsewhere" / "teacher"  # the same teacher at another path (another machine) is accepted
    shutil.copytree(parts[0], moved)
    assert open_cache(str(full_cache), dataclasses.replace(
        run, concept=dataclasses.replace(run.concept, teacher=str(moved))), store).meta["teacher_layer"] == 1
    # a cache made before cocomix hashed only the SAE's own files records its whole folder's hash: still its SAE
    from cocomix.digest import file_sha256

    downloaded, older = tmp_path / "downloaded-sae", tmp_path / "older-cache"
    shutil.copytree(parts[1], downloaded)
    (downloaded / "sparsity.safetensors").write_bytes(b"log sparsity")  # beside the weights, as SAELens's hub has
    shutil.copytree(full_cache, older)
    meta = json.loads((older / "meta.json").read_text())
    (older / "meta.json").write_text(json.dumps({**meta, "sae_sha256": file_sha256(downloaded)}))
    assert open_cache(str(older), dataclasses.replace(
        run, concept=dataclasses.replace(run.concept, sae=str(downloaded))), store).meta["teacher_layer"] == 1
    other_sae, other_teacher = tmp_path / "other-sae", tmp_path / "other-teacher"
    for src, dst in ((parts[1], other_sae), (parts[0], other_teacher)):
        shutil.copytree(src, dst)
        weights = next(dst.glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # another model at the same shapes
    for change, key in (({"teacher_layer": 2}, "teacher_layer"), ({"sae": str(other_sae)}, "sae_sha256"),
                        ({"sae_k": 4}, "sae_k"), ({"teacher": str(other_teacher)}, "teacher_fingerprint"),
                        ({"teacher": "openai-community/gpt2"}, "teacher=")):
        bad = dataclasses.replace(run, concept=dataclasses.replace(run.concept, **change))
        with pytest.raises(ConfigError, match=key):
            open_cache(str(full_cache), bad, store)


def test_a_cache_only_run_opens_and_another_store_or_a_damaged_file_is_refused(
        store_dir: Path, tmp_path: Path, parts: tuple[Path, Path], full_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run naming no teacher (its targets all come from the cache) opens it; a store with the same tokenizer and
    sizes but other windows is refused; a truncated targets file or ids outside the SAE are one-line errors."""
    import dataclasses

    import numpy as np

    from cocomix.config import ConceptConfig, DataConfig, RunConfig
    from cocomix.flops import config_parts
    from cocomix.methods.cocomix import open_cache

    run = RunConfig(method="cocomix", model=ModelConfig(vocab_size=320, n_layer=4, n_head=2, d_model=32,
                                                        context_length=64),
                    data=DataConfig(path=str(store_dir), seq_len=32, window_offset="fixed"),
                    concept=ConceptConfig(teacher="", teacher_layer=1, sae="", n_latents=256, k_attr=4,
                                          concept_layer=2, cache=str(full_cache)))
    store = TokenStore.open(store_dir)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # "" was read as the current directory's teacher
    assert open_cache(str(full_cache), run, store).meta["teacher"] == str(parts[0])
    permuted = tmp_path / "permuted"  # the same tokenizer and token counts, the windows in another order
    shutil.copytree(store_dir, permuted)
    ids = np.fromfile(permuted / "train.bin", dtype=np.uint16)
    n = len(ids) // 32 * 32
    ids[:n] = ids[:n].reshape(-1, 32)[::-1].reshape(-1)
    ids.tofile(permuted / "train.bin")
    with pytest.raises(ConfigError, match="train_sampled_sha256"):
        open_cache(str(full_cache), dataclasses.replace(run, data=dataclasses.replace(run.data, path=str(permuted))),
                   TokenStore.open(permuted))
    damaged = tmp_path / "damaged"
    shutil.copytree(full_cache, damaged)
    targets = damaged / "targets_train.bin"
    data = np.fromfile(targets, dtype=np.uint16)
    data[40] = 300  # an id beyond the SAE's 256 latents
    data.tofile(targets)
    cache = TargetCache.open(damaged)
    assert cache.batch("train", [1]).shape == (1, 32, 4)  # window 0 holds the bad id, window 1 does not
    with pytest.raises(DataError, match="holds latent ids outside \\[0, 256\\) in window 0; the cache"):
        cache.batch("train", [2, 0, 1])  # named by the window that holds it, not the batch's first
    meta = json.loads((damaged / "meta.json").read_text())
    for key, value, said in (("windows", {"train": "806"}, "windows is {'train': '806'}, expected a count"),
                             ("windows", [1], "windows is \\[1\\]"), ("dtype", 5, "dtype is 5, expected an integer"),
                             ("dtype", "float32", "dtype is 'float32'"), ("k_attr", "4", "k_attr is '4'"),
                             ("sae_k", "32", "sae_k is '32', expected an integer >= 1"),  # (the FLOPs count's)
                             ("teacher_shape", {"d_model": 32}, "teacher_shape is {'d_model': 32}, expected the"),
                             ("teacher_shape", {**meta["teacher_shape"], "block_params": 5}, "teacher_shape is")):
        (damaged / "meta.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(DataError, match=f"meta.json: {said}.*damaged: extract it again"):
            TargetCache.open(damaged)
        cfg = dataclasses.replace(run, concept=dataclasses.replace(run.concept, cache=str(damaged), sae_k=None))
        with pytest.raises(DataError, match=f"meta.json: {said}.*damaged: extract it again"):
            config_parts(cfg)  # (what `cocomix flops` counts from the cache)
    assert config_parts(dataclasses.replace(run, concept=dataclasses.replace(run.concept, sae_k=None)))[1] == \
        meta["sae_k"]
    (damaged / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))  # a newer cocomix's cache
    with pytest.raises(DataError, match="format_version is 2; this cocomix reads concept caches of format 1 to 1"):
        TargetCache.open(damaged)
    (damaged / "meta.json").write_text(json.dumps(meta))
    targets.write_bytes(targets.read_bytes()[:-10])
    with pytest.raises(DataError, match="bytes, expected .* the cache is damaged"):
        TargetCache.open(damaged).batch("train", [1])


def test_a_first_call_that_fails_does_not_block_the_corrected_one(store_dir: Path, tmp_path: Path,
                                                                   parts: tuple[Path, Path]) -> None:
    teacher = Teacher.from_pretrained(parts[0], layer=1)
    with pytest.raises(ConfigError, match="--sae: reads 16-wide activations"):  # refused before the folder is made
        extract_concepts(store_dir, tmp_path / "c", teacher, TopKSAE(16, 64, 4), teacher_spec="t", sae_spec="s",
                         seq_len=32, progress=False)
    assert not (tmp_path / "c").exists()
    # a call stopped before its first window was written (an out-of-memory first batch) leaves a meta.json that a
    # call with other settings (another dtype or SAE) replaces; once a window is written, settings must match
    _extract(store_dir, tmp_path / "c", parts, max_windows=0)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["sae"], meta["sae_sha256"] = "an-earlier-sae", "0" * 64
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    _extract(store_dir, tmp_path / "c", parts, max_windows=3)
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["sae"] == str(parts[1])
    with pytest.raises(ConfigError, match="k_attr=4, not 3 as asked here"):
        _extract(store_dir, tmp_path / "c", parts, k_attr=3)


def test_mismatched_settings_are_refused(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path]) -> None:
    for bad, message in (({"gradient_at": "reconstruction"}, "needs attribution_loss=next_token"),
                         ({"selection": "activation", "attribution_loss": "next_token"}, "selection=activation"),
                         ({"k_attr": 0}, "k_attr")):  # refused before the cache folder is made: a fixed rerun works
        with pytest.raises(ConfigError, match=message):
            _extract(store_dir, tmp_path / "refused", parts, **bad)
        assert not (tmp_path / "refused").exists()
    _extract(store_dir, tmp_path / "c", parts, max_windows=2)
    with pytest.raises(ConfigError, match="k_attr"):
        _extract(store_dir, tmp_path / "c", parts, k_attr=3)
    _extract(store_dir, tmp_path / "c", parts)
    with pytest.raises(ConfigError, match="seq_len"):
        TargetCache.open(tmp_path / "c", expect={"seq_len": 64})
    with pytest.raises(ConfigError, match="gradient_at='residual', not 'reconstruction' as asked here"):
        TargetCache.open(tmp_path / "c", expect={"gradient_at": "reconstruction"})
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    del meta["gradient_at"]  # a cache written before the option existed: made at the residual
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    assert TargetCache.open(tmp_path / "c", expect={"gradient_at": "residual"}).meta["k_attr"] == 4


def test_describe_concepts_counts_and_top_contexts(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.concepts.describe import describe_concepts

    store = TokenStore.open(store_dir)
    teacher, sae = Teacher.from_pretrained(parts[0], layer=1), load_sae(str(parts[1]))
    stats = describe_concepts(store, teacher, sae, 32, split="train", max_windows=10, batch_size=3, top_n=5,
                              progress=False)
    values, indices, _ = sae.encode(teacher.hidden(store.batch("train", list(range(10)), 32)))
    values = values.detach()
    live = values > 0
    assert torch.equal(stats["counts"], torch.bincount(indices[live], minlength=sae.n_latents))
    for latent in range(sae.n_latents):
        acts = torch.sort(values[live][indices[live] == latent], descending=True).values[:5]
        got = stats["values"][latent][: acts.numel()]
        assert torch.allclose(got, acts), latent
        assert (stats["values"][latent][acts.numel():] == float("-inf")).all()
    w, p = int(stats["windows"][indices[0, 3, 0]][0]), int(stats["token_positions"][indices[0, 3, 0]][0])
    assert values[w, p][indices[w, p] == indices[0, 3, 0]].numel() == 1  # the stored place really activates it
    h = teacher.hidden(store.batch("train", list(range(10)), 32))[:, 1:].reshape(-1, 32)  # position 0 left out
    assert float(stats["fvu"]) == pytest.approx(sae_fvu(sae, h), rel=1e-9) and float(stats["fvu"]) > 1
    import cocomix.concepts.describe as describe

    monkeypatch.setattr(describe, "SAE_CHUNK_ELEMENTS", 2 * sae.n_latents * 7)  # 7 positions per SAE encode
    chunked = describe_concepts(store, teacher, sae, 32, split="train", max_windows=10, batch_size=3, top_n=5,
                                progress=False)
    assert all(torch.equal(chunked[k], stats[k]) for k in stats if k not in ("values", "fvu"))  # the same places
    assert torch.allclose(chunked["values"], stats["values"], atol=1e-5)  # ... values up to the matmul's rounding
    assert float(chunked["fvu"]) == pytest.approx(float(stats["fvu"]), rel=1e-6)

    r = run_cli("describe-concepts", "--data", str(store_dir),
                "--teacher", str(parts[0]), "--teacher-layer", "1", "--sae", str(parts[1]), "--seq-len",
                "32", "--max-windows", "6", "--device", "cpu", "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "d" / "concepts.json").read_text())
    assert len(report["latents"]) == sae.n_latents and report["positions"] == 6 * 32
    fvu = json.loads(r.stdout)["fvu"]
    assert report["fvu"] == fvu > 1 and f"The SAE leaves {fvu:.4f} of the variance" in (
        tmp_path / "d" / "concepts.md").read_text()
    assert r.stderr.count("cocomix: warning: --sae: the SAE leaves") == 1  # the random test SAE
    fired = [c for c in report["latents"] if c["count"]]
    assert fired and all(f"«{ex['token']}»" in ex["text"] for c in fired for ex in c["examples"])
    tok, stream = store.tokenizer(), store.tokens(report["split"])  # the marked token is the one at (window, position)
    assert all(ex["token"] == tok.decode([int(stream[ex["window"] * 32 + ex["position"]])])
               for c in fired for ex in c["examples"])
    assert "## Latent" in (tmp_path / "d" / "concepts.md").read_text()
    assert "will replace it" not in r.stderr
    r = run_cli("describe-concepts", "--data", str(store_dir), "--teacher", str(parts[0]), "--teacher-layer", "1",
                "--sae", str(parts[1]), "--seq-len", "32", "--max-windows", "2", "--device", "cpu", "--out",
                str(tmp_path / "d"))  # into its own output again: said
    assert r.returncode == 0 and "holds concept descriptions (describe-concepts); this run will replace it" in r.stderr

    # an example whose snippet repeats another's (a refrain) is listed once in concepts.md, with its count; the
    # json keeps every example
    from cocomix.concepts.describe import write_report

    # (the same passage read at a neighbouring token is counted with the stronger snippet there)
    twice = {"counts": torch.tensor([5, 0]), "positions": torch.tensor(64), "values": torch.tensor(
        [[2.5, 2.0, 1.0, 0.9, 0.8], [float("-inf")] * 5]), "windows": torch.tensor([[0, 0, 1, 1, 1], [-1] * 5]),
        "token_positions": torch.tensor([[5, 5, 9, 11, 20], [-1] * 5])}
    write_report(twice, store, tmp_path / "twice", "train", 32, context=4)
    examples = json.loads((tmp_path / "twice" / "concepts.json").read_text())["latents"][0]["examples"]
    assert len(examples) == 5 and examples[0]["text"] == examples[1]["text"] != examples[2]["text"]
    listed = [ln for ln in (tmp_path / "twice" / "concepts.md").read_text().splitlines() if ln.startswith("- ")]
    assert len(listed) == 3 and listed[0].startswith("- 2.500: ") and listed[0].endswith(" (×2)")
    assert listed[1].startswith("- 1.000: ") and listed[1].endswith(" (+1 at neighbouring tokens)")  # 11 near 9
    assert listed[2].startswith("- 0.800: ") and "×" not in listed[2] and "+" not in listed[2]  # 20: too far


def test_report_marks_the_recorded_token_within_its_window(store_dir: Path, tmp_path: Path) -> None:
    """write_report on hand-made stats: each snippet is tokens[max(window start, at - context) : min(window end,
    at + 1 + context)] with token `at` = window · T + position marked; frequency = count / positions; concepts.md
    lists the latents that fired by count, descending (not by latent id)."""
    from cocomix.concepts.describe import write_report

    store = TokenStore.open(store_dir)
    tok, stream = store.tokenizer(), store.tokens("train")
    ninf = float("-inf")
    stats = {"counts": torch.tensor([2, 7, 0, 4]), "positions": torch.tensor(3 * 32),
             "values": torch.tensor([[1.5, ninf, ninf], [3.0, 2.0, 1.0], [ninf] * 3, [0.5, ninf, ninf]]),
             "windows": torch.tensor([[0, -1, -1], [1, 2, 1], [-1] * 3, [2, -1, -1]]),
             "token_positions": torch.tensor([[5, -1, -1], [0, 17, 31], [-1] * 3, [1, -1, -1]])}
    write_report(stats, store, tmp_path / "r", "train", 32, context=4)
    report = json.loads((tmp_path / "r" / "concepts.json").read_text())
    # (latent, example) -> (first, marked, end) token indices of the snippet in the split, by hand
    expected = {(0, 0): (1, 5, 10), (1, 0): (32, 32, 37), (1, 1): (77, 81, 86), (1, 2): (59, 63, 64),
                (3, 0): (64, 65, 70)}
    for (latent, n), (first, at, end) in expected.items():
        ex = report["latents"][latent]["examples"][n]
        assert (ex["window"], ex["position"]) == divmod(at, 32)
        here = tok.decode([int(stream[at])])
        assert here not in (tok.decode([int(stream[at - 1])]), tok.decode([int(stream[at + 1])]))  # a shift shows
        assert ex["token"] == here
        assert ex["text"] == (tok.decode([int(t) for t in stream[first:at]]) + f"«{here}»"
                              + tok.decode([int(t) for t in stream[at + 1:end]]))
    assert [len(c["examples"]) for c in report["latents"]] == [1, 3, 0, 1]
    assert [c["frequency"] for c in report["latents"]] == [2 / 96, 7 / 96, 0.0, 4 / 96]
    md = (tmp_path / "r" / "concepts.md").read_text()
    headers = [ln.split(":")[0] for ln in md.splitlines() if ln.startswith("## Latent ")]
    assert headers == ["## Latent 1", "## Latent 3", "## Latent 0"]  # counts 7, 4, 2; latent 2 never fired


def test_extraction_sets_the_matmul_precision_training_sets(store_dir: Path, tmp_path: Path,
                                                             parts: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 on CUDA in training must also hold in extract-concepts, or cached targets differ from online ones."""
    import cocomix.concepts.cache as cache

    seen: list[torch.device] = []
    monkeypatch.setattr(cache, "cuda_matmul_precision", seen.append)
    _extract(store_dir, tmp_path / "c", parts, max_windows=4)
    assert seen == [torch.device("cpu")]


def test_store_with_a_larger_vocabulary_than_the_teacher_is_refused(store_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_hf(Transformer(ModelConfig(vocab_size=100, n_layer=2, n_head=2, d_model=32, context_length=64)),
              tmp_path / "small_teacher")
    teacher = Teacher.from_pretrained(tmp_path / "small_teacher", layer=0)
    assert teacher.vocab_size == 100
    with pytest.raises(ConfigError, match="exceeds the teacher's 100"):
        extract_concepts(store_dir, tmp_path / "c", teacher, TopKSAE(32, 64, 4), teacher_spec="t", sae_spec="s",
                         seq_len=32, progress=False)


def test_a_store_token_the_teacher_lacks_is_refused(store_dir: Path, tmp_path: Path) -> None:
    """The teacher's tokenizer holds every other token of the store at the same id but one: that token would be
    read as whatever the teacher has at its id (or nothing), so the store is refused, naming it."""
    from cocomix.teacher_tokenizer import check_teacher_tokenizer

    store = TokenStore.open(store_dir)
    vocab = store.tokenizer().backend.get_vocab(with_added_tokens=True)
    dropped = max(vocab, key=vocab.get)  # the last merge
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for t, i in vocab.items() if t != dropped}))
    with pytest.raises(ConfigError, match=rf"1 of its {len(vocab)} tokens have other ids .* \(token {vocab[dropped]} "):
        check_teacher_tokenizer("hf", tmp_path, store)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    check_teacher_tokenizer("hf", tmp_path, store)  # all of them: accepted


def test_a_teacher_with_another_tokenizer_is_refused(store_dir: Path, tmp_path: Path,
                                                     parts: tuple[Path, Path]) -> None:
    """Same vocabulary size, other ids: an HF folder's tokenizer.json / vocab.json, or a teacher run's recorded
    tokenizer, that is not the store's is refused before any target is computed; the store's own is accepted."""
    from cocomix.config import DataConfig, RunConfig, TrainConfig
    from cocomix.data import train_bpe
    from cocomix.train import train

    store = TokenStore.open(store_dir)
    other = train_bpe(["an entirely different corpus of words, " * 50, "with other merges and ids\n" * 50], 320)
    assert other.vocab_size <= store.vocab_size
    teacher_dir = tmp_path / "teacher"
    shutil.copytree(parts[0], teacher_dir)
    assert Teacher.from_pretrained(teacher_dir, layer=1).tokenizer_source == ("hf", teacher_dir)
    for name, text in (("tokenizer.json", store.tokenizer().backend.to_str()), ("tokenizer.json", None)):
        (teacher_dir / name).write_text(text if text is not None else other.backend.to_str())
        teacher = Teacher.from_pretrained(teacher_dir, layer=1)
        if text is not None:
            teacher.check_store(store, 32)
        else:
            with pytest.raises(ConfigError, match="its tokenizer is not the teacher's: .* tokens have other ids"):
                _extract(store_dir, tmp_path / "c", (teacher_dir, parts[1]))
            assert not (tmp_path / "c").exists()
    (teacher_dir / "tokenizer.json").unlink()
    (teacher_dir / "vocab.json").write_text(json.dumps(other.backend.get_vocab()))
    with pytest.raises(ConfigError, match="not the teacher's"):
        Teacher.from_pretrained(teacher_dir, layer=1).check_store(store, 32)
    for name in ("vocab.json", "tokenizer_config.json", "special_tokens_map.json"):  # weights and config only
        (teacher_dir / name).unlink(missing_ok=True)
    with pytest.warns(UserWarning, match=r"teacher: the teacher has no tokenizer to check the store's against"):
        Teacher.from_pretrained(teacher_dir, layer=1).check_store(store, 32)

    run = RunConfig(data=DataConfig(path=str(store_dir), seq_len=16),
                    model=ModelConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32, context_length=64),
                    train=TrainConfig(steps=1, micro_batch_size=2, eval_every=0, save_every=1, log_every=1))
    train(run, tmp_path / "run", quiet=True)
    run_teacher = Teacher.from_pretrained(tmp_path / "run", layer=0)
    run_teacher.check_store(store, 16)
    shutil.copytree(store_dir, tmp_path / "store2")
    (tmp_path / "store2" / "tokenizer" / "tokenizer.json").write_text(other.backend.to_str())
    with pytest.raises(DataError, match="not the one the teacher run was trained with"):
        run_teacher.check_store(TokenStore.open(tmp_path / "store2"), 16)


HUB_CHECK = """
import shutil, sys
from pathlib import Path
from cocomix.data import TokenStore
from cocomix.errors import ConfigError
from cocomix.teacher import Teacher

store, snapshot = TokenStore.open(sys.argv[1]), Path(sys.argv[2])
for tokenizer in sys.argv[3:]:  # "-": no tokenizer files in the cache; else the tokenizer.json to put there
    (snapshot / "tokenizer.json").unlink(missing_ok=True)
    if tokenizer != "-":
        shutil.copy(tokenizer, snapshot / "tokenizer.json")
    teacher = Teacher.from_pretrained("cocomix-test/teacher", layer=1)
    assert teacher.tokenizer_source == ("hub", "cocomix-test/teacher"), teacher.tokenizer_source
    try:
        teacher.check_store(store, 32)
        print("ACCEPTED")
    except ConfigError as e:
        print("REFUSED", e)
"""


def test_a_hub_teacher_is_checked_against_the_store_through_the_hub_cache(store_dir: Path, tmp_path: Path,
                                                                         parts: tuple[Path, Path]) -> None:
    """A hub name (the paper's `gpt2`) is loaded, model and tokenizer, from the Hugging Face cache, here offline
    from a cache laid out as the hub client writes it; a store of another tokenizer is refused, the teacher's
    own accepted, and a teacher with no tokenizer files is not checked."""
    import os
    import subprocess
    import sys

    from cocomix.data import train_bpe

    store = TokenStore.open(store_dir)
    repo = tmp_path / "hub" / "models--cocomix-test--teacher"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(parts[0], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}

    other = train_bpe(["an entirely different corpus of words, " * 50, "with other merges and ids\n" * 50], 320)
    (tmp_path / "other.json").write_text(other.backend.to_str())
    (tmp_path / "own.json").write_text(store.tokenizer().backend.to_str())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (snapshot / name).unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", HUB_CHECK, str(store_dir), str(snapshot), "-",
                        str(tmp_path / "other.json"), str(tmp_path / "own.json")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    none, another, own = r.stdout.splitlines()
    assert none == "ACCEPTED"  # nothing to compare with (transformers builds an empty GPT2Tokenizer): not refused
    assert another.startswith("REFUSED") and "its tokenizer is not the teacher's" in another
    assert own == "ACCEPTED"


def test_cache_files_that_do_not_read_are_clear_errors_and_the_sae_is_matched_by_content(tmp_path: Path) -> None:
    """A truncated meta.json / progress.json is a one-line error naming it; the SAE given by another path to the
    same files (relative vs absolute) is the same SAE."""
    from cocomix.concepts import cache as cc
    from cocomix.errors import CheckpointError, ConfigError

    (tmp_path / "meta.json").write_text('{"k_attr": 4, "win')
    with pytest.raises(CheckpointError, match=r"meta\.json: unreadable \(JSONDecodeError\); delete the cache"):
        cc._read_cache_json(tmp_path / "meta.json")
    (tmp_path / "progress.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"progress\.json: expected a JSON object"):
        cc._read_cache_json(tmp_path / "progress.json")
    stored = {"k_attr": 4, "windows": {}, "sae": "runs/demo/sae", "sae_sha256": "abc", "teacher": "t"}
    cc._check_matches(tmp_path, stored, {**stored, "sae": "/work/runs/demo/sae"})  # same content: fine
    with pytest.raises(ConfigError, match="made with sae_sha256='abc'"):
        cc._check_matches(tmp_path, stored, {**stored, "sae": "/work/runs/demo/sae", "sae_sha256": "def"})


def test_the_eq1_gradient_path_is_decided_on_the_first_train_window_whatever_the_splits(
        store_dir: Path, tmp_path: Path, parts: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """attribution_loss=next_token picks its gradient path on one window up front; extraction of the val split
    alone decides on train's first window, as training does, so both take the same path."""
    store = TokenStore.open(store_dir)
    seen = []
    real = Teacher.decide_next_token

    def spy(self: Teacher, ids: torch.Tensor, *args: object, **kwargs: object) -> object:
        seen.append(ids.clone())
        return real(self, ids, *args, **kwargs)

    monkeypatch.setattr(Teacher, "decide_next_token", spy)
    _extract(store_dir, tmp_path / "c", parts, splits=("val",), attribution_loss="next_token", max_windows=2)
    assert len(seen) == 1 and torch.equal(seen[0], store.batch("train", [0], 32))


def test_an_sae_that_does_not_fit_the_teacher_is_named(store_dir: Path, tmp_path: Path,
                                                       parts: tuple[Path, Path]) -> None:
    """The random test SAE leaves the teacher's activations unexplained: extraction warns, naming --sae. An SAE
    that reconstructs every activation exactly (latents ±e_i, k = d) extracts silently."""
    with pytest.warns(UserWarning, match=r"--sae: the SAE leaves \d+\.\d\d of the variance of the teacher's block 1"):
        _extract(store_dir, tmp_path / "random", parts, splits=("val",))
    eye = torch.eye(32)
    exact = TopKSAE(32, 64, 32).set_weights(pre_bias=torch.zeros(32), W_enc=torch.cat([eye, -eye]),
                                            latent_bias=torch.zeros(64), W_dec=torch.cat([eye, -eye]).T)
    save_saelens(exact, tmp_path / "exact-sae")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _extract(store_dir, tmp_path / "exact", (parts[0], tmp_path / "exact-sae"), splits=("val",))


def test_the_teacher_fingerprint_samples_a_large_weight_file_at_its_start_middle_and_end(tmp_path: Path) -> None:
    """Over 3 MiB a weight file is fingerprinted by its name, size and the 1 MiB blocks at 0, size // 2 and
    size - 1 MiB (written out here with hashlib): a fine-tune that changes only the file's middle or its last MiB
    is another teacher."""
    import hashlib
    import random

    from cocomix.concepts.cache import teacher_fingerprint

    mib, size = 1 << 20, 8 << 20
    data = random.Random(0).randbytes(size)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    samples = data[:mib] + data[size // 2:size // 2 + mib] + data[-mib:]
    want = hashlib.sha256(f"model.safetensors:{size}\n".encode() + samples).hexdigest()
    assert teacher_fingerprint(str(path)) == want
    for where in (size // 2 + 1000, size - 1000):  # in the middle sample; in the last MiB
        changed = bytearray(data)
        changed[where] ^= 0x01
        path.write_bytes(bytes(changed))
        assert teacher_fingerprint(str(path)) != want, where
    changed = bytearray(data)
    changed[2 * mib] ^= 0x01  # between the samples: the same fingerprint (cheap, by design)
    path.write_bytes(bytes(changed))
    assert teacher_fingerprint(str(path)) == want


PARTIAL_UNDER_TORCHRUN = """
import os
import signal
import sys

import torch

import cocomix.concepts.cache as cache
from cocomix.errors import Stopped
from cocomix.sae import load_sae
from cocomix.teacher import Teacher
from cocomix.train import distributed as dd

store, out, teacher_path, sae_path, windows, signal_rank = sys.argv[1:]
ctx = dd.context_from_env()
dd.setup(ctx, torch.device("cpu"))
if ctx.rank == int(signal_rank):  # SIGTERM to this rank alone, while it computes its second batch
    real, calls = cache.compute_targets, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    cache.compute_targets = signalled
teacher = Teacher.from_pretrained(teacher_path, layer=1)
try:
    cache.extract_concepts(store, out, teacher, load_sae(sae_path), teacher_spec=teacher_path, sae_spec=sae_path,
                           seq_len=32, batch_size=4, progress=False, max_windows=int(windows), ctx=ctx)
except Stopped as e:
    print(f"rank {ctx.rank} stopped: {e.detail}")
dd.teardown(ctx)
"""


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _extract_args(store_dir: Path, parts: tuple[Path, Path]) -> list[str]:
    return ["extract-concepts", "--data", str(store_dir), "--teacher", str(parts[0]), "--teacher-layer", "1",
            "--sae", str(parts[1]), "--seq-len", "32", "--batch-size", "4", "--device", "cpu"]


def _same_files(a: Path, b: Path) -> None:
    for name in ("targets_train.bin", "targets_val.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta_a, meta_b = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert meta_a == meta_b


def test_two_processes_write_the_one_process_cache(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path],
                                                   full_cache: Path) -> None:
    """extract-concepts under torchrun (2 gloo processes): each round's batches are split between the ranks and rank
    0 writes them, so the files are the one-process files byte for byte; a failure on rank 0 alone stops every
    rank (`on_main_rank`), none waits."""
    r = subprocess.run([*TORCHRUN, "-m", "cocomix", *_extract_args(store_dir, parts), "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"complete"') == 1 and json.loads(r.stdout)["complete"]  # rank 0 alone prints
    assert r.stderr.count("cocomix: warning: --sae: the SAE leaves") == 1  # ... and warns (the random test SAE)
    _same_files(tmp_path / "two", full_cache)
    args = _extract_args(store_dir, parts)
    # rank 0 cannot lock the folder (another writer holds it): every rank stops with a one-line error, none waits
    from cocomix.train.guard import RunLock

    held = RunLock(tmp_path / "held")
    try:
        r = subprocess.run([*TORCHRUN, "-m", "cocomix", *args, "--out", str(tmp_path / "held")], capture_output=True,
                           text=True, timeout=300)
    finally:
        held.release()
    assert r.returncode != 0 and "another cocomix process is writing this directory" in r.stderr
    assert "rank 1: rank 0 stopped with an error" in r.stderr


@pytest.mark.slow  # ~40 s on 2 cores: two torchrun launches (`make test-slow`)
def test_a_stopped_two_process_extraction_resumes_on_one(store_dir: Path, tmp_path: Path, parts: tuple[Path, Path],
                                                         full_cache: Path) -> None:
    """A 2-process extraction stopped after 13 windows (a round cut short: rank 1 gets one window of it), or by a
    SIGTERM on rank 1 alone, resumes in one process to the one-process files."""
    args = _extract_args(store_dir, parts)
    script = tmp_path / "partial.py"
    script.write_text(PARTIAL_UNDER_TORCHRUN)

    def partial(out: Path, windows: int, signal_rank: int) -> str:
        r = subprocess.run([*TORCHRUN, str(script), str(store_dir), str(out), str(parts[0]), str(parts[1]),
                            str(windows), str(signal_rank)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    assert "stopped" not in partial(tmp_path / "resumed", 13, -1)
    assert json.loads((tmp_path / "resumed" / "progress.json").read_text())["train"] == 13
    # SIGTERM on rank 1 alone, during the second round: every rank stops after that round, which rank 0 has saved
    said = partial(tmp_path / "signalled", 10 ** 6, 1)
    assert "rank 0 stopped: 16/" in said and "rank 1 stopped: 16/" in said, said
    assert json.loads((tmp_path / "signalled" / "progress.json").read_text())["train"] == 16
    for out in ("resumed", "signalled"):
        r = run_cli(*args, "--out", str(tmp_path / out))
        assert r.returncode == 0, r.stderr[-2000:]
        _same_files(tmp_path / out, full_cache)


def test_describe_concepts_under_torchrun_finds_what_one_process_finds(store_dir: Path, tmp_path: Path,
                                                                      parts: tuple[Path, Path]) -> None:
    """describe-concepts under torchrun (2 gloo processes): the ranks take every 2nd batch of windows and combine
    counts, FVU sums and top lists, so rank 0's report holds the one-process counts and examples (the FVU up to
    the order of its float64 sums), written and printed once."""
    args = ["describe-concepts", "--data", str(store_dir), "--teacher", str(parts[0]), "--teacher-layer", "1",
            "--sae", str(parts[1]), "--seq-len", "32", "--max-windows", "11", "--batch-size", "2", "--top-n", "4",
            "--device", "cpu"]
    one = run_cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    r = subprocess.run([*TORCHRUN, "-m", "cocomix", *args, "--out", str(tmp_path / "two")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"report"') == 1 and r.stderr.count("the SAE leaves") == 1  # rank 0 alone reports
    a, b = (json.loads((tmp_path / d / "concepts.json").read_text()) for d in ("one", "two"))
    assert b.pop("fvu") == pytest.approx(a.pop("fvu"), rel=1e-12)
    assert a == b and sum(c["count"] for c in a["latents"]) > 0 and a["positions"] == 11 * 32
    assert sum(len(c["examples"]) for c in a["latents"]) > 20


def test_concepts_md_shows_control_characters_of_the_corpus_escaped(tmp_path: Path) -> None:
    """A token decoding to an ANSI escape or a right-to-left override reaches concepts.md escaped (`cat` of the
    file would otherwise clear the terminal); newlines keep their spaced ⏎ and pipes their backslash."""
    from cocomix.concepts.describe import write_report

    pieces = ["a", "b", "\x1b[2J", "\u202e", "\t", "|", "\n", "c"]

    class Store:  # the two things write_report reads: the tokenizer and the split's token stream
        def tokenizer(self) -> object:
            return type("Tok", (), {"decode": staticmethod(lambda ids: "".join(pieces[i] for i in ids))})()

        def tokens(self, split: str) -> np.ndarray:
            return np.arange(8, dtype=np.uint16)

    stats = {"counts": torch.tensor([1]), "positions": torch.tensor(8), "values": torch.tensor([[2.0]]),
             "windows": torch.tensor([[0]]), "token_positions": torch.tensor([[3]])}
    write_report(stats, Store(), tmp_path / "r", "train", 8, context=4)  # type: ignore[arg-type]
    line = next(ln for ln in (tmp_path / "r" / "concepts.md").read_text().splitlines() if ln.startswith("- "))
    assert line == "- 2.000: ab\\x1b[2J«\\u202e»⇥\\| ⏎ c"
