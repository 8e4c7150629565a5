"""Analytic FLOPs against a hand count (69M presets), exact parameter counts, and the paper's width matching."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cocomix.config import ModelConfig
from cocomix.flops import LMShape, active_params, ntp_width_for, run_flops, student_params
from cocomix.model import Transformer
from cocomix.presets import get_preset

# Hand count, per token, T = 1024 (conventions in cocomix/flops.py: 2mkn per matmul, attention 4·S·d per query
# forward, training = 3 × forward, frozen-teacher backward = activation gradients only).
# CoCoMix-69M student: d = 512, 8 blocks, P = 12·d² = 3,145,728 matmul weights per block, concept layer 3.
#   blocks 0-2:  3 × (2P + 4·1024·512)                   = 3 × 8,388,608              =  25,165,824
#   blocks 3-7:  5 × (2·2P + 2·4·2048·512)               = 5 × 20,971,520             = 104,857,600
#   LM head:     2·512·50257                                                          =  51,463,168
#   concept head 2·512·32768 + compression 2·32·512      = 33,554,432 + 32,768        =  33,587,200
#   forward 215,073,792; training ×3                                                  = 645,221,376
# GPT-2 teacher: d = 768, 12 blocks, P = 7,077,888; forward 12 × (2P + 4·1024·768) + 2·768·50257
#   = 12 × 17,301,504 + 77,194,752                                                    = 284,812,800
#   backward to block 5: head 77,194,752 + 6 × (2P + 8·1024·768) = 77,194,752 + 122,683,392 = 199,878,144
# SAE: 2·768·32768 + 2·32·768                                                         =  50,380,800
# NTP-69M: d = 624, P = 4,672,512: 3 × (8 × (2P + 4·1024·624) + 2·624·50257)
#   = 3 × (8 × 11,900,928 + 62,720,736) = 3 × 157,928,160                             = 473,784,480
HAND = {"cocomix_student": 645_221_376, "teacher": 284_812_800 + 199_878_144, "sae": 50_380_800,
        "ntp_student": 473_784_480}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * b  # the count is exact: the hand figures above to the FLOP


def test_69m_presets_match_the_hand_count() -> None:
    cocomix = run_flops(get_preset("gpt2-69m-cocomix"))
    ntp = run_flops(get_preset("gpt2-69m-ntp"))
    assert _close(cocomix["student"], HAND["cocomix_student"])
    assert _close(cocomix["teacher"], HAND["teacher"]) and _close(cocomix["sae"], HAND["sae"])
    assert _close(cocomix["total"], HAND["cocomix_student"] + HAND["teacher"] + HAND["sae"])
    assert _close(ntp["student"], HAND["ntp_student"]) and ntp["teacher"] == ntp["sae"] == 0
    preset = get_preset("gpt2-69m-cocomix")
    cached = run_flops(dataclasses.replace(preset, data=dataclasses.replace(preset.data, window_offset="fixed"),
                                           concept=dataclasses.replace(preset.concept, cache="targets")))
    assert cached["teacher"] == cached["sae"] == 0 and cached["student"] == cocomix["student"]
    kd = run_flops(get_preset("gpt2-69m-kd"))
    assert _close(kd["teacher"], 284_812_800)


def test_target_options_count_what_the_teacher_runs() -> None:
    """next_token: one backward pass (own-position attention), the window mean's cost: forward, the head's
    backward and the 6 blocks above block 5; activation selection: blocks 0-5 forward only (the teacher stops
    there), SAE encode without the gather."""
    run = get_preset("gpt2-69m-cocomix")
    per_position = run_flops(dataclasses.replace(run, concept=dataclasses.replace(
        run.concept, attribution_loss="next_token")))
    assert _close(per_position["teacher"], 284_812_800 + 77_194_752 + 122_683_392)
    assert per_position["teacher"] == run_flops(run)["teacher"]
    at_d = run_flops(dataclasses.replace(run, concept=dataclasses.replace(
        run.concept, attribution_loss="next_token", gradient_at="reconstruction")))
    assert _close(at_d["teacher"], 2 * 284_812_800 + 77_194_752 + 122_683_392)  # a second forward
    assert _close(at_d["sae"] - per_position["sae"], 2 * 768 * 32768 + 2 * 32 * 768)  # the reconstruction
    activation = run_flops(dataclasses.replace(run, concept=dataclasses.replace(run.concept, selection="activation")))
    assert _close(activation["teacher"], 6 * 17_301_504) and _close(activation["sae"], 2 * 768 * 32768)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("bias", [None, True, False])
def test_parameter_count_formula_equals_the_built_model(flavour: str, bias: bool | None) -> None:
    cfg = ModelConfig(flavour=flavour, vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64, bias=bias)
    assert student_params(cfg) == Transformer(cfg).num_params()


def test_width_matching_reproduces_the_papers_baselines() -> None:
    for size, ntp_width in (("69m", 624), ("386m", 1072), ("1b", 2096)):
        run = get_preset(f"gpt2-{size}-cocomix")
        assert ntp_width_for(run) == ntp_width == get_preset(f"gpt2-{size}-ntp").model.d_model
    assert abs(active_params(get_preset("gpt2-69m-cocomix")) / 1e6 - 68.3) < 0.1  # paper: "69M" (68.2M est.)


def test_active_parameters_of_the_ablations_count_what_feeds_the_output() -> None:
    """The `hidden` ablation's predictor and compression all feed the output; with mixing=none no predictor
    does (the paper's "Concept pred (53M)")."""
    import dataclasses

    from cocomix.model.concept import HiddenSeam

    run = get_preset("gpt2-69m-cocomix")
    m = run.model
    hidden = dataclasses.replace(run, concept=dataclasses.replace(run.concept, target="hidden"))
    seam = HiddenSeam(3, m.d_model, run.concept.d_teacher)
    assert active_params(hidden) == student_params(m) + sum(p.numel() for p in seam.parameters())
    for target in ("concepts", "hidden"):
        alone = dataclasses.replace(run, concept=dataclasses.replace(run.concept, target=target, mixing="none"))
        assert active_params(alone) == student_params(m)
    assert 512 < ntp_width_for(hidden) < 624  # its 3M-parameter MLP, not the 16.8M concept head


def test_flops_command_says_whose_teacher_shape_it_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from cocomix.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/demo here: the tiny preset's teacher path does not exist
    assert main(["flops", "--preset", "tiny-cocomix"]) == 0
    seen = capsys.readouterr()
    out = json.loads(seen.out)
    assert out["teacher_shape"].startswith("GPT-2 small assumed ('runs/demo/teacher'")
    # the summary on stderr says the figures rest on assumptions, not only the JSON
    assert seen.err.endswith("; teacher: GPT-2 small assumed (see teacher_shape); SAE k 32 assumed (see sae_k)\n")
    assert out["sae_k"]["k"] == 32 and out["sae_k"]["from"].startswith(  # and says why k is assumed
        "32 assumed (concept.sae_k is unset and concept.sae could not be read: runs/demo/teacher-sae/sae: not found")
    assert main(["flops", "--preset", "tiny-cocomix", "--set", "concept.sae_k=8"]) == 0
    assert json.loads(capsys.readouterr().out)["sae_k"] == {"k": 8, "from": "concept.sae_k"}
    assert main(["flops", "--preset", "tiny-cocomix", "--set", "concept.teacher=gpt2"]) == 0
    seen = capsys.readouterr()
    assert json.loads(seen.out)["teacher_shape"] == "gpt2" and "GPT-2 small assumed" not in seen.err
    assert main(["flops", "--preset", "tiny"]) == 0
    seen = capsys.readouterr()
    assert "teacher_shape" not in json.loads(seen.out)  # NTP has no teacher
    total = json.loads(seen.out)["flops_per_token"]["total"]
    assert seen.err == f"flops: {total / 1e6:.1f} MFLOP/token per training step (student {total / 1e6:.1f}, " \
        "teacher 0.0, SAE 0.0)\n"  # the same in words, on stderr
    # cached targets: the training step's count, and what extracting them cost once (compare's total adds it)
    assert main(["flops", "--preset", "tiny-cocomix", "--set", "concept.teacher=gpt2", "--set",
                 "concept.cache=targets"]) == 0
    seen = capsys.readouterr()
    f = json.loads(seen.out)["flops_per_token"]
    assert f["cached_targets"] > 0 and f["teacher"] == 0
    assert f"the cached targets cost {f['cached_targets'] / 1e6:.1f} more once, when extracted (`compare` counts " \
        f"them: {(f['total'] + f['cached_targets']) / 1e6:.1f} in all)" in seen.err
    # no teacher named: the figures still rest on GPT-2 small, and say so; no teacher work counted: nothing said
    assert main(["flops", "--preset", "tiny-kd", "--set", "concept.teacher="]) == 0
    seen = capsys.readouterr()
    assert json.loads(seen.out)["teacher_shape"] == "GPT-2 small assumed (no concept.teacher)"
    assert "; teacher: GPT-2 small assumed (see teacher_shape)" in seen.err
    assert main(["flops", "--preset", "tiny-cocomix", "--set", "concept.lambda_concept=0"]) == 0
    seen = capsys.readouterr()
    assert "teacher_shape" not in json.loads(seen.out) and "assumed (see teacher_shape)" not in seen.err


def test_the_hidden_ablation_without_mixing_counts_no_compression() -> None:
    from cocomix.flops import LMShape, lm_forward

    run = get_preset("gpt2-69m-cocomix")
    hidden = dataclasses.replace(run, concept=dataclasses.replace(run.concept, target="hidden", mixing="none"))
    m, c = run.model, run.concept
    want = lm_forward(LMShape.from_config(m), run.data.seq_len) \
        + 2.0 * (m.d_model * 4 * m.d_model + 4 * m.d_model * c.d_teacher)  # the head's MLP, no compression
    assert _close(run_flops(hidden)["student"], 3 * want)
    prefix = sum(2.0 * 7_077_888 + 4.0 * run.data.seq_len * 768 for _ in range(c.teacher_layer + 1))
    assert _close(run_flops(hidden)["teacher"], prefix)  # the teacher stops at its capture block


def test_a_cached_run_is_charged_the_teacher_its_cache_recorded() -> None:
    """A run reading a target cache never loads its teacher: the FLOPs use the shape the cache recorded, and
    without one (an older cache, a teacher not resolvable here) GPT-2 small is assumed, with a note."""
    from types import SimpleNamespace

    from cocomix.train.loop import flops_per_token

    run = get_preset("gpt2-69m-cocomix")
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, window_offset="fixed"),
                              concept=dataclasses.replace(run.concept, cache="targets", teacher="/nowhere/teacher"))
    tiny = {"block_params": [4096] * 2, "d_model": 32, "vocab_size": 97}
    method = SimpleNamespace(teacher=None, sae=None, cache=SimpleNamespace(meta={"teacher_shape": tiny, "sae_k": 8}))
    flops, note = flops_per_token(run, method)
    online = run_flops(dataclasses.replace(run, concept=dataclasses.replace(run.concept, cache="")),
                       LMShape(tuple(tiny["block_params"]), 32, 97), 8)
    assert note == "" and _close(flops["cached_targets"], online["teacher"] + online["sae"])
    flops, note = flops_per_token(run, SimpleNamespace(teacher=None, sae=None, cache=SimpleNamespace(meta={})))
    assert "as GPT-2 small" in note and flops["cached_targets"] > 100 * (online["teacher"] + online["sae"]) / 2


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt-neox"])
def test_a_local_hf_teacher_of_any_architecture_is_counted_as_training_counts_it(arch: str, tmp_path: Path) -> None:
    """`cocomix flops` reads an HF folder's shape from its config (built on the meta device), also where cocomix
    cannot build the model itself (grouped-query attention, GPT-NeoX): the same count as the loaded teacher's."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    from cocomix.flops import LMShape, teacher_shape
    from cocomix.teacher import Teacher

    torch.manual_seed(0)
    if arch == "llama-gqa":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=3, num_attention_heads=4))
    model.save_pretrained(tmp_path / arch)
    loaded = Teacher.from_pretrained(tmp_path / arch, 1)
    want = LMShape.from_module(loaded.model, loaded.blocks, loaded.width, loaded.output_vocab)
    assert teacher_shape(str(tmp_path / arch)) == want and want.n_layer == 3 and want.vocab_size == 97
    kv = 2 if arch == "llama-gqa" else 4  # k and v projections are half as wide with 2 of 4 heads
    mlp = 3 * 32 * 48 if arch == "llama-gqa" else 2 * 32 * 64
    assert want.block_params[0] == 2 * 32 * 32 + 2 * 32 * (32 * kv // 4) + mlp


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_block_shapes_from_the_config_equal_the_built_model(flavour: str) -> None:
    """The per-block matmul weights the count uses, against the Linear weights of a built student (Llama's
    SwiGLU MLP has three matrices, GPT-2's two)."""
    from cocomix.teacher_blocks import find_blocks

    cfg = ModelConfig(flavour=flavour, vocab_size=97, n_layer=3, n_head=4, d_model=32, context_length=64)
    model = Transformer(cfg)
    assert LMShape.from_config(cfg) == LMShape.from_module(model, find_blocks(model), 32, 97)


def test_addition_mixing_and_the_pre_activation_multiplier_are_counted_as_they_run() -> None:
    """mixing=add keeps one position per token in the upper blocks (no interleaving); the pre-activation
    multiplier reads every latent's score: a dense 2·768·32768 product with the gradient in place of the gather of
    the 32 active latents' decoder columns (2·32·768)."""
    run = get_preset("gpt2-69m-cocomix")
    add = run_flops(dataclasses.replace(run, concept=dataclasses.replace(run.concept, mixing="add")))
    # 8 blocks at one position over 1024 keys, LM head, concept head and compression; training × 3
    forward = 8 * (2 * 3_145_728 + 4 * 1024 * 512) + 51_463_168 + 33_587_200
    assert _close(add["student"], 3 * forward)
    pre = run_flops(dataclasses.replace(run, concept=dataclasses.replace(run.concept, multiplier="pre_activation")))
    assert _close(pre["sae"] - run_flops(run)["sae"], 2 * 768 * 32768 - 2 * 32 * 768)
    assert _close(pre["sae"], 2 * (2 * 768 * 32768))  # encode + the dense product


def test_an_untied_head_and_the_concept_biases_are_active_parameters() -> None:
    run = get_preset("gpt2-69m-cocomix")
    untied = dataclasses.replace(run.model, tie_embeddings=False)
    assert student_params(untied) == student_params(run.model) + 50257 * 512
    # the concept head (C × d weights + C biases), the mix_k compression rows it selects, compression and
    # pre-bias vectors (d each): the paper's "(C + K) × d activated parameters" plus biases
    assert active_params(run) == student_params(run.model) + (32768 + 32) * 512 + 32768 + 2 * 512


def test_a_llama_baseline_width_keeps_whole_rotary_heads() -> None:
    """Llama widths step by 2·n_head (each head's dimension even, for the rotary pairs) and by 16."""
    run = get_preset("gpt2-69m-cocomix")
    llama = dataclasses.replace(run, model=dataclasses.replace(run.model, flavour="llama", n_head=16))
    width = ntp_width_for(llama)
    assert width % 16 == 0 and (width // 16) % 2 == 0 and width > 512


def test_linear_subclasses_are_counted_as_weights() -> None:
    """A block whose projections subclass nn.Linear (Falcon's FalconLinear) costs what plain Linears cost."""
    from torch import nn

    class OwnLinear(nn.Linear):
        pass

    plain = nn.ModuleList([nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8))])
    own = nn.ModuleList([nn.Sequential(OwnLinear(8, 16), OwnLinear(16, 8))])
    assert LMShape.from_module(None, own, 8, 10).block_params == (256,)
    assert LMShape.from_module(None, own, 8, 10) == LMShape.from_module(None, plain, 8, 10)
