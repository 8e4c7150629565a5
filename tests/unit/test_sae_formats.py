"""SAE file formats: OpenAI (.pt, .safetensors), SAELens and sparsify folders, the SAELens writer, `load_sae`.

Each format is written here with its documented keys and shapes (random weights), loaded, and compared with
that format's own encode/decode written out directly. The official anchor checks the OpenAI path bit for bit.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cocomix.errors import CheckpointError
from cocomix.sae import TopKSAE, load_openai, load_sae, load_saelens, load_sparsify, save_saelens
from cocomix.sae.formats import sae_path

D, C, K = 16, 64, 6
ANCHOR = Path(__file__).resolve().parents[1] / "fixtures" / "official-anchor"
_EXECUTED: list[int] = []


def _rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _x(seed: int = 99) -> torch.Tensor:
    return 2.0 * _rand(3, 5, D, seed=seed) + 0.3


def _dense(pre: torch.Tensor, k: int, relu_first: bool = False) -> torch.Tensor:
    if relu_first:
        top = torch.topk(torch.relu(pre), k, dim=-1)
        vals = top.values
    else:
        top = torch.topk(pre, k, dim=-1)
        vals = torch.relu(top.values)
    return torch.zeros_like(pre).scatter(-1, top.indices, vals)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Max abs difference below tol, relative to the reference's scale when that exceeds 1 (fp32 rounding)."""
    return (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


# ----------------------------------------------------------------------------------------------- OpenAI


def _openai_sd(activation: str = "TopK", k: int = K) -> OrderedDict:
    sd = OrderedDict(
        pre_bias=_rand(D, seed=1, scale=0.1),
        **{"encoder.weight": _rand(C, D, seed=2, scale=D**-0.5)},
        latent_bias=_rand(C, seed=3, scale=0.1),
        **{"decoder.weight": _rand(D, C, seed=4)},
        stats_last_nonzero=torch.zeros(C, dtype=torch.long),
        latents_activation_frequency=torch.ones(C),
        latents_mean_square=torch.zeros(C),
    )
    sd["activation"] = activation
    sd["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"} if activation == "TopK" else {}
    return sd


def _openai_reference(sd: dict, x: torch.Tensor):
    """OpenAI `LN` then `Autoencoder.encode` / `decode` (normalize=True for TopK)."""
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    std = xc.std(-1, keepdim=True)
    xn = xc / (std + 1e-5)
    z = _dense((xn - sd["pre_bias"]) @ sd["encoder.weight"].T + sd["latent_bias"], K)
    return z, (z @ sd["decoder.weight"].T + sd["pre_bias"]) * std + mu


def test_openai_pt_with_non_tensor_entries(tmp_path: Path) -> None:
    sd = _openai_sd()
    path = tmp_path / "sae.pt"
    torch.save(sd, path)
    sae = load_openai(path)
    assert (sae.d_in, sae.n_latents, sae.k, sae.normalize, sae.postact) == (D, C, K, True, "relu")
    x = _x()
    z_ref, recon_ref = _openai_reference(sd, x)
    with torch.no_grad():
        z, _ = sae.encode_dense(x)
        assert _close(z, z_ref) and _close(sae(x), recon_ref)
    assert load_sae(path).k == K


def test_openai_pt_saved_by_a_recent_torch_keeps_the_activation_copies(tmp_path: Path) -> None:
    """Upstream `TopK.state_dict` runs for the child module under a recent torch, so a home-trained SAE's file also
    holds `activation.k` / `activation.postact_fn`: read when they agree, refused when they contradict."""
    sd = _openai_sd()
    sd["activation.k"], sd["activation.postact_fn"] = K, "ReLU"
    torch.save(sd, tmp_path / "home.pt")
    sae = load_openai(tmp_path / "home.pt")
    x = _x()
    with torch.no_grad():
        assert sae.k == K and _close(sae.encode_dense(x)[0], _openai_reference(sd, x)[0])
    sd["activation.k"] = K + 1
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=rf"odd\.pt: activation\.k is {K + 1} but activation_state_dict\.k "
                                              rf"is {K}"):
        load_openai(tmp_path / "odd.pt")


def test_odd_openai_contents_and_k_values_are_one_line_errors(tmp_path: Path) -> None:
    """What a .pt may unpickle to beyond what OpenAI writes (keys that are not names, a tensor where the activation
    copy holds an int, a tensor without values) and a TopK size that is no whole number are CheckpointErrors
    naming the file, not a TypeError / RuntimeError from comparing them, nor an SAE of a truncated k."""
    cases = [({0: torch.zeros(1), "zz": torch.zeros(1)}, r"unexpected entries \[0, 'zz'\]"),
             ({"activation.k": torch.tensor([K, K])}, r"activation\.k is tensor\(\[6, 6\]\) but"),
             ({"encoder.weight": torch.empty(C, D, device="meta")}, r"'encoder\.weight' must be .* on meta")]
    for i, (change, said) in enumerate(cases):
        torch.save({**_openai_sd(), **change}, tmp_path / f"odd{i}.pt")
        with pytest.raises(CheckpointError, match=rf"odd{i}\.pt: .*{said}"):
            load_openai(tmp_path / f"odd{i}.pt")
    sd = {key: v for key, v in _openai_sd().items() if isinstance(v, torch.Tensor)}
    save_file(sd, str(tmp_path / "sae.safetensors"), metadata={"format": "pt"})
    torch.save(_openai_sd(), tmp_path / "sae.pt")
    for path in (tmp_path / "sae.safetensors", tmp_path / "sae.pt"):
        for k in (4.7, "4", True, 0, float(K)):
            for load in (load_openai, load_sae):
                with pytest.raises(CheckpointError, match=rf"sae\.\w+: k must be a whole number >= 1 \(the SAE's "
                                                          rf"TopK size\), got {re.escape(repr(k))}"):
                    load(path, k=k)
    assert load_sae(tmp_path / "sae.safetensors", k=K).k == load_sae(tmp_path / "sae.pt", k=K).k == K


def test_openai_safetensors_needs_k(tmp_path: Path) -> None:
    sd = {key: v for key, v in _openai_sd().items() if isinstance(v, torch.Tensor)}
    path = tmp_path / "sae.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"no TopK size; give its k \(concept.sae_k in a run config, "
                                              r"--sae-k on extract-concepts and describe-concepts\)"):
        load_openai(path)
    sae = load_sae(path, k=K)
    x = _x()
    z_ref, recon_ref = _openai_reference(sd, x)
    with torch.no_grad():
        z, _ = sae.encode_dense(x)
        assert _close(z, z_ref) and _close(sae(x), recon_ref)


def test_openai_file_loads_strictly_and_in_fp32(tmp_path: Path) -> None:
    """As OpenAI's `from_state_dict` (strict `load_state_dict` into an fp32 module): an unknown tensor is refused,
    and a half-precision file computes in fp32."""
    tensors = {key: v for key, v in _openai_sd().items() if isinstance(v, torch.Tensor)}
    save_file({**tensors, "threshold": torch.zeros(C)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors: unexpected entries \['threshold'\]"):
        load_openai(tmp_path / "extra.safetensors", k=K)
    sd = _openai_sd()
    half = {key: v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for key, v in sd.items()}
    torch.save(half, tmp_path / "half.pt")
    sae = load_openai(tmp_path / "half.pt")
    assert sae.W_enc.dtype == torch.float32
    as_fp32 = {key: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
               for key, v in half.items()}
    x = _x()
    with torch.no_grad():
        assert _close(sae.encode_dense(x)[0], _openai_reference(as_fp32, x)[0])


def test_openai_relu_sae_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v4.pt"
    torch.save(_openai_sd(activation="ReLU"), path)
    with pytest.raises(CheckpointError, match=r"v4\.pt.*only TopK SAEs are supported"):
        load_openai(path)


def test_openai_k_mismatch_and_bad_shapes(tmp_path: Path) -> None:
    path = tmp_path / "sae.pt"
    torch.save(_openai_sd(), path)
    with pytest.raises(CheckpointError, match="k=7 was given"):
        load_openai(path, k=7)
    sd = _openai_sd()
    sd["decoder.weight"] = sd["decoder.weight"].T.contiguous()
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt.*'decoder\.weight' has shape \(64, 16\), expected \(16, 64\)"):
        load_openai(bad)
    sd = _openai_sd()
    del sd["encoder.weight"]
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: missing tensor 'encoder\.weight'"):
        load_openai(bad)


def _mark_executed() -> int:
    _EXECUTED.append(1)
    return 0


class _Payload:
    def __reduce__(self):
        return (_mark_executed, ())


def test_openai_pt_with_pickled_object_is_refused_not_run(tmp_path: Path) -> None:
    sd = _openai_sd()
    sd["extra"] = _Payload()
    path = tmp_path / "evil.pt"
    torch.save(sd, path)
    _EXECUTED.clear()
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights_only=True.*Unsupported global") as err:
        load_openai(path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_sae(path)
    assert _EXECUTED == []


def test_a_plain_pickle_of_a_newer_protocol_is_refused_without_torchs_warning(tmp_path: Path) -> None:
    """`pickle.dump(..., protocol=4)` (not torch.save): torch warns of the protocol before refusing; the one-line
    error is all the user sees."""
    import pickle
    import warnings

    path = tmp_path / "p4.pt"
    with open(path, "wb") as f:
        pickle.dump({**_openai_sd(), "extra": _Payload()}, f, protocol=4)
    _EXECUTED.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"p4\.pt: cannot be loaded as plain tensors"):
            load_openai(path)
    assert [str(w.message) for w in seen] == [] and _EXECUTED == []


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: file not found"):
        load_openai(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=r"nowhere.*not found"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not an SAE folder"):
        load_sae(tmp_path / "empty")
    (tmp_path / "lens").mkdir()
    (tmp_path / "lens" / "cfg.json").write_text(json.dumps({"architecture": "topk", "k": K}))
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: file not found"):
        load_saelens(tmp_path / "lens")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_sae(tmp_path / "junk.safetensors", k=K)


@pytest.mark.skipif(not (ANCHOR / "sae_openai.safetensors").is_file(), reason="official anchor not present")
def test_official_anchor_sae_topk_is_reproduced() -> None:
    sae = load_sae(ANCHOR / "sae_openai.safetensors", k=16)
    out = load_file(str(ANCHOR / "outputs.safetensors"))
    with torch.no_grad():
        values, indices, _ = sae.encode(out["teacher.resid_post"])
    assert torch.equal(indices, out["sae.topk_indices"])
    assert _close(values, out["sae.topk_values"])


# ----------------------------------------------------------------------------------------------- SAELens


def _saelens_weights(seed: int = 10) -> dict[str, torch.Tensor]:
    return {
        "W_enc": _rand(D, C, seed=seed, scale=D**-0.5),
        "b_enc": _rand(C, seed=seed + 1, scale=0.1),
        "W_dec": _rand(C, D, seed=seed + 2),
        "b_dec": _rand(D, seed=seed + 3, scale=0.1),
    }


def _write_saelens(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


def _saelens_reference(cfg: dict, w: dict[str, torch.Tensor], x: torch.Tensor):
    """SAELens `process_sae_in` / `TopKSAE.encode` / `decode`, spelled out."""
    mu, std = torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
    if cfg.get("normalize_activations") == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        std = (x - mu).std(-1, keepdim=True)
        x = (x - mu) / (std + 1e-5)
    sae_in = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    norms = w["W_dec"].norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else torch.ones(C)
    acts = _dense(pre * norms, K)
    return acts, ((acts / norms) @ w["W_dec"] + w["b_dec"]) * std + mu


V6 = {
    "architecture": "topk",
    "d_in": D,
    "d_sae": C,
    "k": K,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "metadata": {"sae_lens_version": "6.5.0"},
}
PRE6 = {
    "d_in": D,
    "d_sae": C,
    "activation_fn_str": "topk",
    "activation_fn_kwargs": {"k": K},
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "sae_lens_version": "5.9.0",
}


@pytest.mark.parametrize(
    "cfg",
    [V6, PRE6, {**V6, "normalize_activations": "layer_norm"}, {**V6, "rescale_acts_by_decoder_norm": True}],
    ids=["v6", "pre6-no-b_dec-on-input", "layer_norm", "rescale-by-decoder-norm"],
)
def test_saelens_folder_matches_saelens_semantics(tmp_path: Path, cfg: dict) -> None:
    w = _saelens_weights()
    folder = _write_saelens(tmp_path / "sae", cfg, w)
    sae = load_sae(folder)
    assert sae.k == K and sae.normalize == (cfg["normalize_activations"] == "layer_norm")
    x = _x()
    acts_ref, recon_ref = _saelens_reference(cfg, w, x)
    with torch.no_grad():
        z, _ = sae.encode_dense(x)
        assert _close(z, acts_ref) and _close(sae(x), recon_ref)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"architecture": "jumprelu"}, "only TopK SAEs are supported"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='expected_average_only_in'"),
        ({"architecture": "topk", "k": None}, "'k' must be an integer"),
        ({"d_in": D + 1}, "d_in=17"),
        # SAELens's pre-6 conversion would take activation_fn_kwargs' k: two different k are refused, not guessed
        ({"architecture": "topk", "k": K, "activation_fn_kwargs": {"k": K + 1}}, "disagree; expected one k"),
    ],
)
def test_saelens_refusals_name_the_file(tmp_path: Path, change: dict, message: str) -> None:
    folder = _write_saelens(tmp_path / "sae", {**V6, **change}, _saelens_weights())
    with pytest.raises(CheckpointError, match=message) as err:
        load_saelens(folder)
    assert str(folder) in str(err.value)


def test_saelens_bad_shape_and_scaling_factor(tmp_path: Path) -> None:
    w = _saelens_weights()
    folder = _write_saelens(tmp_path / "a", V6, {**w, "W_dec": w["W_dec"].T.contiguous()})
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: 'W_dec' has shape \(16, 64\)"):
        load_saelens(folder)
    folder = _write_saelens(tmp_path / "b", V6, {**w, "scaling_factor": torch.full((C,), 2.0)})
    with pytest.raises(CheckpointError, match="non-unit 'scaling_factor'"):
        load_saelens(folder)
    folder = _write_saelens(tmp_path / "c", V6, {**w, "scaling_factor": torch.ones(C)})
    assert load_saelens(folder).k == K
    # a JumpReLU SAE's threshold (or any other tensor) would be silently ignored by a TopK reading: refused
    folder = _write_saelens(tmp_path / "d", V6, {**w, "threshold": torch.full((C,), 0.5)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['threshold'\] for a TopK SAE"):
        load_saelens(folder)


def _trained_like_sae(normalize: bool, dtype: torch.dtype = torch.float32) -> TopKSAE:
    sae = TopKSAE(D, C, K, normalize=normalize, dtype=dtype)
    return sae.set_weights(
        pre_bias=_rand(D, seed=21, scale=0.1).to(dtype),
        W_enc=_rand(C, D, seed=22).to(dtype),
        latent_bias=_rand(C, seed=23, scale=0.1).to(dtype),
        W_dec=_rand(D, C, seed=24).to(dtype),
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_save_saelens_round_trip(tmp_path: Path, normalize: bool) -> None:
    sae = _trained_like_sae(normalize)
    folder = save_saelens(sae, tmp_path / "out", metadata={"hook_name": "blocks.2.hook_resid_post"})
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K and cfg["d_in"] == D and cfg["d_sae"] == C
    assert cfg["normalize_activations"] == ("layer_norm" if normalize else "none")
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    # what the written files mean under SAELens's own semantics (independent of load_saelens)
    acts_ref, recon_ref = _saelens_reference(cfg, load_file(str(folder / "sae_weights.safetensors")), _x())
    with torch.no_grad():
        assert _close(sae.encode_dense(_x())[0], acts_ref) and _close(sae(_x()), recon_ref)
    back = load_sae(folder)
    for name in ("pre_bias", "W_enc", "latent_bias", "W_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert (back.k, back.normalize, back.encode_pre_bias) == (sae.k, sae.normalize, sae.encode_pre_bias)
    x = _x()
    with torch.no_grad():
        assert torch.equal(back.encode_dense(x)[0], sae.encode_dense(x)[0]) and torch.equal(back(x), sae(x))
    with pytest.raises(CheckpointError, match="k=3 was given"):
        load_sae(folder, k=3)
    save_saelens(_trained_like_sae(not normalize), folder)  # replaces an existing SAE folder
    assert load_sae(folder).normalize == (not normalize)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left behind


def test_an_sae_folder_is_identified_by_the_files_load_sae_reads(tmp_path: Path) -> None:
    """`sae_sha256` (what caches, checkpoints and labels record) hashes cfg.json and the weights: a README or
    the `.cache/` that a hub download leaves in the folder (rewritten on every download) do not change it, so a
    resume from a re-downloaded copy is not refused; other weights do. A clean folder keeps the hash of the whole
    folder, which earlier records hold."""
    from cocomix.concepts.identity import sae_sha256, same_sae
    from cocomix.config import ConceptConfig
    from cocomix.digest import file_sha256
    from cocomix.errors import ConfigError

    folder = save_saelens(_trained_like_sae(True), tmp_path / "sae")
    clean = sae_sha256(str(folder), 2)
    assert clean == file_sha256(folder)
    (folder / "README.md").write_text("notes")
    (folder / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download" / "cfg.json.metadata").write_text("abc\n1767225600.1\n")
    assert sae_sha256(str(folder), 2) == clean != file_sha256(folder)
    save_saelens(_trained_like_sae(False), folder)
    assert sae_sha256(str(folder), 2) != clean
    # records made before hold the whole folder's hash: still the same SAE for caches, checkpoints and labels
    from cocomix.concepts.cache import _check_matches
    from cocomix.config import RunConfig
    from cocomix.train.resume import check_same_inputs

    (folder / "sparsity.safetensors").write_bytes(b"log feature sparsity")  # what a SAELens download holds
    legacy = file_sha256(folder)
    assert legacy != sae_sha256(str(folder), 2) and same_sae(legacy, str(folder), 2)
    assert not same_sae("0" * 64, str(folder), 2) and not same_sae(legacy, str(tmp_path / "gone"), 2)
    stored = {"sae": "/elsewhere/sae", "sae_sha256": legacy, "teacher_layer": 2}
    _check_matches(tmp_path, stored, {"sae": str(folder), "sae_sha256": sae_sha256(str(folder), 2),
                                      "teacher_layer": 2})  # no error
    with pytest.raises(ConfigError, match="made with sae_sha256"):
        _check_matches(tmp_path, {**stored, "sae_sha256": "0" * 64}, {"sae": str(folder), "sae_sha256":
                                                                        sae_sha256(str(folder), 2), "teacher_layer": 2})
    run = RunConfig(concept=ConceptConfig(sae=str(folder), teacher_layer=2))
    now = {"concept.sae": sae_sha256(str(folder), 2)}
    check_same_inputs({"inputs": {"concept.sae": legacy}}, now, run, tmp_path)  # no error
    with pytest.raises(CheckpointError, match="holds another sae"):
        check_same_inputs({"inputs": {"concept.sae": "0" * 64}}, now, run, tmp_path)
    sparse = _write_sparsify(tmp_path / "sparse", {"k": K, "num_latents": C, "d_in": D}, _sparsify_weights())
    before = sae_sha256(str(sparse), 0)
    (sparse / "README.md").write_text("notes")
    assert sae_sha256(str(sparse), 0) == before


def test_save_saelens_refuses_to_replace_an_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        save_saelens(_trained_like_sae(True), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_save_saelens_is_read_by_sae_lens_if_installed(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like_sae(True)
    folder = save_saelens(sae, tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    x = _x()
    with torch.no_grad():
        assert _close(theirs.encode(x), sae.encode_dense(x)[0]) and _close(theirs(x), sae(x))


# ----------------------------------------------------------------------------------------------- sparsify


def _sparsify_weights() -> dict[str, torch.Tensor]:
    return {
        "encoder.weight": _rand(C, D, seed=31, scale=D**-0.5),
        "encoder.bias": _rand(C, seed=32, scale=0.1) - 2.6,  # some positions get fewer than k positive latents
        "W_dec": _rand(C, D, seed=33),
        "b_dec": _rand(D, seed=34, scale=0.1),
    }


def _write_sparsify(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae.safetensors"))
    return folder


def test_sparsify_folder_matches_sparsify_semantics(tmp_path: Path) -> None:
    w = _sparsify_weights()
    # d_in absent: inferred from encoder.weight; num_latents 0 means expansion_factor * d_in
    cfg = {
        "activation": "topk",
        "expansion_factor": C // D,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
    }
    sae = load_sae(_write_sparsify(tmp_path / "sp", cfg, w))
    assert (sae.d_in, sae.n_latents, sae.k, sae.normalize) == (D, C, K, False)
    x = _x()
    pre = (x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]
    assert ((pre > 0).sum(-1) < K).any()  # the relu/topk order matters for the indices of zero-valued slots
    acts = _dense(pre, K, relu_first=True)  # sparsify: relu, then topk
    with torch.no_grad():
        values, indices, _ = sae.encode(x)
        ref = torch.topk(torch.relu(pre), K, dim=-1)
        assert torch.equal(indices, ref.indices) and _close(values, ref.values)
        assert _close(sae.encode_dense(x)[0], acts)
        assert _close(sae(x), acts @ w["W_dec"] + w["b_dec"])


def test_sparsify_hookpoint_folders_name_the_teacher_layer(tmp_path: Path) -> None:
    """A sparsify run saves one folder per module hookpoint, listed in the run's config.json: `layers.N` / `h.N`
    is block N's output. Loading one for another teacher_layer is a one-line error; the run folder
    (`Sae.load_many`'s layout) resolves to the teacher_layer's folder, and the target cache hashes that folder
    only. Without the run's list (older SAEs named hidden_states[N], the input of block N, `layers.N` too) nothing
    is inferred from names."""
    from cocomix.concepts.cache import sae_sha256
    from cocomix.digest import file_sha256
    from cocomix.errors import ConfigError

    cfg = {"k": K, "num_latents": C, "d_in": D}
    root = tmp_path / "sae-llama-32x"
    for i, name in enumerate(("layers.0", "layers.2", "layers.2.mlp")):
        _write_sparsify(root / name, cfg, {n: w * (i + 1) for n, w in _sparsify_weights().items()})
    with pytest.raises(CheckpointError, match=r"no config\.json listing them as module hookpoints"):
        load_sae(root, teacher_layer=2)  # an older layout: never guessed
    assert load_sae(root / "layers.2", teacher_layer=1).hook_block is None  # unknown meaning: unchecked
    (root / "config.json").write_text(json.dumps({"hookpoints": ["layers.0", "layers.2", "layers.2.mlp"]}))
    assert load_sae(root / "layers.2").hook_block == 2 and load_sae(root / "layers.2.mlp").hook_block is None
    with pytest.raises(ConfigError, match=r"teacher_layer: .* was trained on layers\.2 \(the output of block 2\)"):
        load_sae(root / "layers.2", teacher_layer=1)
    with pytest.raises(ConfigError, match=r"trained on layers\.2\.mlp, which is not the residual stream"):
        load_sae(root / "layers.2.mlp", teacher_layer=2)  # an MLP output is no block's output
    assert load_sae(root, teacher_layer=2).hook_name == "layers.2"
    assert sae_sha256(str(root), 2) == file_sha256(root / "layers.2") != sae_sha256(str(root), 0)
    for layer in (1, None):
        with pytest.raises(CheckpointError, match=r"SAE folders layers\.0, layers\.2, layers\.2\.mlp; expected"):
            load_sae(root, teacher_layer=layer)
    run = tmp_path / "gpt2-run"
    for name in ("h.5", "transformer.h.5"):
        _write_sparsify(run / name, cfg, _sparsify_weights())
    (run / "config.json").write_text(json.dumps({"hookpoints": ["h.5"]}))
    assert load_sae(run / "h.5").hook_block == 5 and load_sae(run, teacher_layer=5).hook_name == "h.5"
    (run / "config.json").write_text(json.dumps({"hookpoints": ["h.5", "transformer.h.5"]}))
    with pytest.raises(CheckpointError, match="h.5 and transformer.h.5 both read block 5"):
        load_sae(run, teacher_layer=5)


def test_sparsify_runs_of_several_seeds_save_a_folder_per_seed(tmp_path: Path) -> None:
    """With several `init_seeds` the sparsify trainer saves `HOOKPOINT/seedN/`: a seed folder is its hookpoint's
    (checked against teacher_layer), and a run or hookpoint folder resolves to its only seed or asks which one."""
    from cocomix.errors import ConfigError

    cfg = {"k": K, "num_latents": C, "d_in": D}
    run = tmp_path / "run"
    for hook, seeds in (("layers.1", ("seed0", "seed1")), ("layers.3", ("seed7",))):
        for i, seed in enumerate(seeds):
            _write_sparsify(run / hook / seed, cfg, {n: w * (i + 1) for n, w in _sparsify_weights().items()})
    (run / "config.json").write_text(json.dumps({"hookpoints": ["layers.1", "layers.3"], "init_seeds": [0, 1]}))
    sae = load_sae(run / "layers.1" / "seed1", teacher_layer=1)
    assert (sae.hook_name, sae.hook_block) == ("layers.1", 1)
    assert torch.equal(sae.W_dec, load_sparsify(run / "layers.1" / "seed1").W_dec)
    with pytest.raises(ConfigError, match=r"trained on layers\.1 \(the output of block 1\)"):
        load_sae(run / "layers.1" / "seed0", teacher_layer=3)
    for spec in (run, run / "layers.1"):
        with pytest.raises(CheckpointError, match=r"layers\.1: SAEs of several seeds \(seed0, seed1\); give"):
            load_sae(spec, teacher_layer=1)
    for spec in (run, run / "layers.3"):
        assert load_sae(spec, teacher_layer=3).hook_block == 3
    assert sae_path(run, 3) == run / "layers.3" / "seed7"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"activation": "groupmax"}, "only TopK"),
        ({"transcode": True}, "transcode=true"),
        ({"embed_skip": True}, "embed_skip=true"),
        ({"normalize_decoder": True, "multi_topk": True, "W_extra": None}, "unexpected tensors"),
        ({"num_latents": C * 2}, "128 latents"),
        ({"d_in": D + 1}, "d_in=17"),
        ({"num_latents": 0, "expansion_factor": "4"}, r"'expansion_factor' must be an integer >= 1, got '4'"),
        ({"num_latents": "x"}, r"'num_latents' must be an integer >= 0, got 'x'"),
    ],
)
def test_sparsify_refusals(tmp_path: Path, change: dict, message: str) -> None:
    weights = _sparsify_weights()
    if change.pop("W_extra", False) is None:  # a tensor the plain TopK forward would silently drop
        weights["W_extra"] = torch.zeros(D)
    folder = _write_sparsify(tmp_path / "sp", {"k": K, "num_latents": C, "d_in": D, **change}, weights)
    with pytest.raises(CheckpointError, match=message) as err:
        load_sparsify(folder)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("hook,block", [("blocks.2.hook_resid_post", 2), ("blocks.3.hook_resid_pre", 2),
                                        ("blocks.0.hook_resid_pre", -1), ("blocks.2.hook_mlp_out", None),
                                        ("blocks.2.hook_resid_mid", None), ("model.layers.3", 3),
                                        ("transformer.h.1", 1)])
@pytest.mark.parametrize("layout", ["6.x", "pre-6", "hook_point"])
def test_saelens_hook_must_be_the_teacher_layer(hook: str, block: int | None, layout: str, tmp_path: Path) -> None:
    """A SAELens SAE names the hook it was trained on; loading it for another teacher_layer is a one-line error
    (resid_pre L is the output of block L − 1; an HF module name is that block's output), and so is a hook that
    is not the residual stream between blocks. No hook name: not checked."""
    from cocomix.errors import ConfigError

    folder = save_saelens(_trained_like_sae(True), tmp_path / "sae", metadata={"hook_name": hook})
    if layout != "6.x":  # the hook name at the top level of cfg.json (before 6.0; `hook_point` in older files)
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg["hook_name" if layout == "pre-6" else "hook_point"] = cfg["metadata"].pop("hook_name")
        (folder / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(folder).hook_block == block
    for layer in (0, 1, 2, 3):
        if layer == block:
            assert load_sae(folder, teacher_layer=layer).hook_name == hook
        elif block is None:
            with pytest.raises(ConfigError, match="which is not the residual stream"):
                load_sae(folder, teacher_layer=layer)
        else:
            with pytest.raises(ConfigError, match=f"teacher_layer: .* was trained on {hook}"):
                load_sae(folder, teacher_layer=layer)
    bare = save_saelens(_trained_like_sae(True), tmp_path / "bare")
    assert load_sae(bare, teacher_layer=5).hook_block is None


@pytest.mark.parametrize("change,message", [({"reshape_activations": "hook_z"}, "reshaped activations"),
                                            ({"hook_head_index": 3}, "reshaped activations"),
                                            ({"metadata": ["not", "an", "object"]}, "'metadata' must be an object")])
def test_saelens_refuses_what_is_not_a_residual_encoder(change: dict, message: str, tmp_path: Path) -> None:
    folder = save_saelens(_trained_like_sae(True), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_sae(folder)


def test_saelens_head_and_hook_z_saes_are_refused_in_either_config_layout(tmp_path: Path) -> None:
    """6.x keeps hook_head_index in metadata; a pre-6 config without reshape_activations whose hook is hook_z is
    reshaped by SAELens (GPT-2's 12 × 64 hook_z has the residual stream's width, so no shape check catches it)."""
    folder = save_saelens(_trained_like_sae(True), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    layouts = [{**cfg, "metadata": {**cfg["metadata"], "hook_head_index": 2}},
               {k: v for k, v in cfg.items() if k != "reshape_activations"} | {"hook_name": "blocks.2.attn.hook_z"}]
    for changed in layouts:
        (folder / "cfg.json").write_text(json.dumps(changed))
        with pytest.raises(CheckpointError, match="reshaped activations"):
            load_sae(folder)
    plain = {k: v for k, v in cfg.items() if k != "reshape_activations"} | {"hook_name": "blocks.2.hook_resid_post"}
    (folder / "cfg.json").write_text(json.dumps(plain))
    assert load_sae(folder).hook_block == 2  # no key and a residual hook: loaded as before


def test_saelens_sae_of_a_centred_transformer_lens_stream_centres_its_input(tmp_path: Path) -> None:
    """center_writing_weights: true (TransformerLens) means the SAE saw h − mean_d(h): loaded, it encodes the
    centred stream (so a per-position shift changes nothing) and reconstructs in the uncentred one."""
    x = _rand(6, D, seed=5)
    shift = _rand(6, 1, seed=6) * 3
    for flag, centred in ((True, True), (False, False), (None, False)):
        kwargs = {} if flag is None else {"model_from_pretrained_kwargs": {"center_writing_weights": flag}}
        folder = save_saelens(_trained_like_sae(False), tmp_path / f"sae-{flag}", metadata=kwargs)
        sae = load_sae(folder)
        assert sae.center_input is centred
        # the file says how the stream was read (raw unless told otherwise), for TransformerLens users
        written = json.loads((folder / "cfg.json").read_text())["metadata"]["model_from_pretrained_kwargs"]
        assert written == {"center_writing_weights": bool(flag)}
        z, _ = sae.encode_dense(x)
        if centred:
            plain = _trained_like_sae(False)
            expect, _ = plain.encode_dense(x - x.mean(-1, keepdim=True))
            assert torch.equal(z, expect) and torch.allclose(sae.encode_dense(x + shift)[0], z, atol=1e-5)
            recon = sae(x)
            centred_recon = plain(x - x.mean(-1, keepdim=True))
            assert torch.allclose(recon, centred_recon + x.mean(-1, keepdim=True), atol=1e-5)
            assert load_sae(save_saelens(sae, tmp_path / "again")).center_input  # written back
        else:
            assert not torch.allclose(sae.encode_dense(x + shift)[0], z, atol=1e-3)


def test_saelens_weights_take_the_configs_dtype_and_a_weights_file_asks_for_its_folder(tmp_path: Path) -> None:
    w = _saelens_weights()
    folder = _write_saelens(tmp_path / "sae", V6, {k: v.bfloat16() for k, v in w.items()})  # stored in bf16
    assert load_sae(folder).W_enc.dtype == torch.float32  # computed as SAELens does: in cfg["dtype"]
    with pytest.raises(CheckpointError, match="the weights of a SAELens SAE; give its folder"):
        load_sae(str(folder / "sae_weights.safetensors"))


def test_an_rmsnorm_teacher_turns_off_transformer_lens_centring() -> None:
    """TransformerLens centres writing weights of LayerNorm models only: an SAE asking for it is centred for a
    GPT-2-style teacher and not (with a warning) for an RMSNorm one."""
    from cocomix.model import Transformer
    from cocomix.teacher import Teacher
    from tests.conftest import tiny_model_config

    for flavour, centred in (("gpt2", True), ("llama", False)):
        teacher = Teacher(Transformer(tiny_model_config(flavour, n_layer=2)), layer=0)
        assert teacher.norm_kind == ("layer_norm" if flavour == "gpt2" else "rms_norm")
        sae = _trained_like_sae(False)
        sae.center_input = True
        if centred:
            assert teacher.fit_sae(sae).center_input
        else:
            with pytest.warns(UserWarning, match="this teacher uses RMSNorm"):
                assert not teacher.fit_sae(sae).center_input


def test_an_openai_file_in_the_published_layout_is_checked_against_the_teacher_layer(tmp_path: Path) -> None:
    """`resid_post_mlp_v5_32k/autoencoders/5.pt` (the paper's SAE, as published) reads block 5's output."""
    from cocomix.errors import ConfigError

    for location, block in (("resid_post_mlp_v5_32k", 5), ("resid_post_attn_v5_32k", None)):
        path = tmp_path / location / "autoencoders" / "5.pt"
        path.parent.mkdir(parents=True)
        torch.save(_openai_sd(), path)
        if block is None:  # mid-block: not the residual stream cocomix reads
            with pytest.raises(ConfigError, match="blocks.5.hook_resid_mid, which is not the residual stream"):
                load_sae(path, teacher_layer=5)
            continue
        assert load_sae(path, teacher_layer=5).hook_block == 5
        with pytest.raises(ConfigError, match="set teacher_layer=5"):
            load_sae(path, teacher_layer=4)
    plain = tmp_path / "sae.pt"  # any other name: nothing to check
    torch.save(_openai_sd(), plain)
    assert load_sae(plain, teacher_layer=3).hook_name is None


def test_degenerate_tensors_and_dtypes_are_one_line_errors(tmp_path: Path) -> None:
    """What a file may hold but an SAE cannot run on: a sparse tensor (torch.load's weights_only allows one), an
    empty weight, float8 (no isfinite, no matmul: SAELens's own str_to_dtype refuses it), a scaling factor of
    another length than the latents."""
    sd = _openai_sd()
    sd["encoder.weight"] = sd["encoder.weight"].to_sparse()
    torch.save(sd, tmp_path / "sparse.pt")
    with pytest.raises(CheckpointError, match=r"sparse\.pt: 'encoder\.weight' must be a dense, non-empty 2-D "
                                              r"tensor.*torch\.sparse_coo"):
        load_sae(tmp_path / "sparse.pt")
    sd = _openai_sd()
    sd["encoder.weight"], sd["pre_bias"] = torch.zeros(C, 0), torch.zeros(0)
    torch.save(sd, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt: '(encoder\.weight|pre_bias)' must be a dense, non-empty"):
        load_sae(tmp_path / "empty.pt")
    w = _saelens_weights()
    folder = _write_saelens(tmp_path / "f8", {**V6, "dtype": "float8_e4m3fn"}, w)
    with pytest.raises(CheckpointError, match=r"cfg\.json: 'dtype' 'float8_e4m3fn' is not one of float32"):
        load_saelens(folder)
    folder = _write_saelens(tmp_path / "unknown", {**V6, "dtype": "float33"}, w)
    with pytest.raises(CheckpointError, match=r"'dtype' 'float33' is not one of"):
        load_saelens(folder)
    folder = _write_saelens(tmp_path / "f8w", V6, w)
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in w.items()}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"'W_enc' must be a dense, non-empty 2-D tensor.*float8"):
        load_saelens(tmp_path / "f8w")
    folder = _write_saelens(tmp_path / "scale", V6, {**w, "scaling_factor": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"'scaling_factor' has shape \(3,\), expected \(64,\)"):
        load_saelens(folder)


def test_an_sae_path_may_start_with_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`~/saes/l5.pt` in a config file, as concept.teacher and data.path take it: loaded, hashed and compared."""
    from cocomix.concepts.identity import sae_sha256, same_sae

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(_openai_sd(), tmp_path / "s.pt")
    assert load_sae("~/s.pt").k == K and sae_path("~/s.pt") == tmp_path / "s.pt"
    digest = sae_sha256("~/s.pt", None)
    assert digest is not None and digest == sae_sha256(str(tmp_path / "s.pt"), None)
    assert same_sae(digest, "~/s.pt", None)


def test_a_folder_it_may_not_read_beside_sparsify_saes_is_no_traceback(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Scanning a folder for sparsify hookpoints meets another user's private folder (a mount's lost+found):
    that child is not an SAE; an unreadable spec folder itself is one line naming it."""
    import errno
    import os

    root = tmp_path / "run"
    _write_sparsify(root / "layers.2", {"k": K, "num_latents": C, "d_in": D}, _sparsify_weights())
    (root / "config.json").write_text(json.dumps({"hookpoints": ["layers.2"]}))
    (root / "locked").mkdir()
    real_stat = Path.stat

    def stat(self: Path, *args: object, **kwargs: object) -> os.stat_result:
        if "locked" in self.parts and self.name != "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    real_iterdir = Path.iterdir

    def iterdir(self: Path):  # noqa: ANN202
        if self.name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert load_sae(root, teacher_layer=2).hook_block == 2
    with pytest.raises(CheckpointError, match=r"locked/sae_weights\.safetensors: cannot read \(Permission denied\)"):
        load_sae(root / "locked", teacher_layer=2)
