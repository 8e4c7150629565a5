"""Every paper preset against the paper's settings (App. A, Table 6) and the official configs, value by value:
the numbers are written out here from `../shared/reference/paper.md`, not read from `cocomix.presets`."""

from __future__ import annotations

import pytest

from cocomix.presets import PRESETS, get_preset

# size -> (n_layer, n_head, CoCoMix d, NTP/KD/pause d, concept layer index, peak lr, steps, warm-up, windows/step)
SIZES = {"69m": (8, 8, 512, 624, 3, 6e-4, 40_000, 130, 512),
         "386m": (24, 16, 1024, 1072, 5, 3e-4, 40_000, 130, 512),
         "1b": (24, 16, 2048, 2096, 5, 2e-4, 20_000, 65, 1024)}
METHODS = ("ntp", "cocomix", "kd", "pause", "kd-pause")


def test_every_paper_preset_is_covered() -> None:
    paper = {name for name in PRESETS if name.startswith("gpt2-")}
    assert paper == {f"gpt2-{size}-{method}" for size in SIZES for method in METHODS}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", SIZES)
def test_paper_preset_matches_the_paper(size: str, method: str) -> None:
    n_layer, n_head, d_cocomix, d_baseline, concept_layer, lr, steps, warmup, windows = SIZES[size]
    run = get_preset(f"gpt2-{size}-{method}")
    m, t, c = run.model, run.train, run.concept
    assert run.method == method
    # Table 6: same layers and heads, baselines wider (matched on activated parameters); GPT-2 tokenizer, T = 1024
    assert (m.flavour, m.n_layer, m.n_head, m.vocab_size, m.context_length) == ("gpt2", n_layer, n_head, 50257, 1024)
    assert m.d_model == (d_cocomix if method == "cocomix" else d_baseline)
    assert run.data.seq_len == 1024 and run.data.window_offset == "random"
    # App. A: AdamW (0.9, 0.95), weight decay 0.1 (official: every parameter), warm-up then cosine to 10% of the
    # peak, gradient clipping 1.0 and eps 1e-8 (official config); dropout 0.1 (GPT-2's: the official dropout 0.0
    # is never wired into the model); 0.5M / 0.5M / 1M tokens per step
    assert (t.lr, t.steps, t.warmup, t.min_lr_ratio) == (lr, steps, warmup, 0.1)
    assert (t.beta1, t.beta2, t.eps, t.weight_decay, t.decay_all_params) == (0.9, 0.95, 1e-8, 0.1, True)
    assert t.grad_clip == 1.0 and m.dropout == 0.1
    assert (t.seed, t.log_every) == (22, 50)  # the official config's seed and log_step_freq
    assert t.micro_batch_size * t.grad_accum * run.data.seq_len == windows * 1024
    if method == "ntp":
        return
    # the teacher: GPT-2 124M; the concepts: OpenAI's 32k TopK(32) SAE on its 6th block's output (index 5)
    assert (c.teacher, c.teacher_layer, c.d_teacher) == ("openai-community/gpt2", 5, 768)
    assert (c.n_latents, c.sae_k) == (32768, 32) and c.sae.endswith(".pt")
    assert c.lambda_kd == 0.1  # KD and KD + pause: λ_KD = 0.1
    if method in ("cocomix", "pause", "kd-pause"):  # predicted / inserted at the 4th (69M) or 6th block
        assert c.concept_layer == concept_layer
    if method == "cocomix":  # λ = 0.1, K_attr = 4, TopK of the concept logits 32 (official concept_num)
        assert (c.lambda_concept, c.k_attr, c.mix_k) == (0.1, 4, 32)
        assert (c.selection, c.multiplier, c.mixing, c.target) == ("attribution", "activation", "insert", "concepts")


def test_the_preset_list_gives_each_whole_first_sentence(capsys: pytest.CaptureFixture) -> None:
    """`cocomix presets` prints one line per preset with its docstring's first sentence, even one that wraps."""
    from cocomix.cli import main

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    pause = next(line for line in lines if line.startswith("gpt2-69m-pause "))
    assert pause.endswith("at block index 3 (the paper's wording).")  # a sentence that spans two docstring lines
    assert all(line.rstrip().endswith((".", ")")) for line in lines), lines
