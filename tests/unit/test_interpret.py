"""Interpretability and steering: concept labels, per-token inspection, the HTML page, steering semantics in the
student (logits × α before the TopK) and the teacher (SAE latent × α), the steering summary, compression norms."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cocomix.config import ConceptConfig, DataConfig, ModelConfig, RunConfig
from cocomix.errors import CocomixError
from cocomix.interpret.compression import compression_norms, compression_report
from cocomix.interpret.inspect import TokenConcepts, format_table, inspect_ids, write_html
from cocomix.interpret.labels import ConceptBook
from cocomix.interpret.steer import _LatentScale, check_steering, steer_student, steer_teacher, teacher_activity
from cocomix.interpret.steer_eval import choose_concepts, summarize
from cocomix.methods import NTP, CoCoMix
from cocomix.model import Transformer, generate
from cocomix.sae import TopKSAE
from cocomix.teacher import Teacher

C = 80


def _model() -> Transformer:
    run = RunConfig(method="cocomix", data=DataConfig(seq_len=16),
                    model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64),
                    concept=ConceptConfig(n_latents=C, concept_layer=2, mix_k=8, k_attr=4))
    model = CoCoMix(run).build_model().eval()
    with torch.no_grad():
        model.seam.compress_weight.normal_(0.0, 0.5)  # make the concept vector matter for the next token
    return model


def _decode(ids: list[int]) -> str:
    return "".join("<&\n" if i % 10 == 0 else chr(97 + i % 26) for i in ids)


def _book(tmp_path: Path) -> ConceptBook:
    latents = [{"latent": i, "count": 0, "frequency": 0.0, "examples": []} for i in range(C)]
    latents[3] = {"latent": 3, "count": 5, "frequency": 0.01, "examples": [
        {"text": "a «king» b"}, {"text": "c «king» d"}, {"text": "e «queen» f"}, {"text": "no mark"}]}
    (tmp_path / "concepts.json").write_text(json.dumps({"latents": latents}))
    return ConceptBook.load(tmp_path)


def test_labels_name_a_latent_by_its_most_common_activating_token(tmp_path: Path) -> None:
    book = _book(tmp_path)
    assert (book[3].token, book[3].consistency, book[3].context) == ("king", 2 / 3, "a «king» b")
    assert book[3].short() == "«king» 67%" and book[4].short() == "(never fired)"
    assert ConceptBook.empty(5)[2].short() == "-"
    # a context that itself holds guillemets: the stored token decides, not the first «…» of the text
    latents = [{"latent": 0, "count": 2, "frequency": 0.1, "examples": [
        {"token": " roi", "text": "dit «oui» au« roi»"}, {"token": " roi", "text": "le« roi» »"}]}]
    (tmp_path / "fr.json").write_text(json.dumps({"latents": latents}))
    assert ConceptBook.load(tmp_path / "fr.json")[0].token == " roi"
    (tmp_path / "bad.json").write_text("{\"no\": 1}")
    with pytest.raises(CocomixError, match="bad.json: not a describe-concepts"):
        ConceptBook.load(tmp_path / "bad.json")


def test_inspect_lists_the_top_predicted_concepts_per_token(tmp_path: Path) -> None:
    model = _model()
    ids = [5, 17, 40, 3, 10, 77]
    rows = inspect_ids(model, ids, _decode, top=4)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), concept_logits=True).aux["concept_logits"][0]   # (6, C)
    assert len(rows) == len(ids)
    for t, row in enumerate(rows):
        assert [c for c, _, _ in row.concepts] == torch.topk(logits[t], 4).indices.tolist()
        assert math.isclose(row.concepts[0][2], float(torch.softmax(logits[t], -1).max()), rel_tol=1e-5)
    table = format_table(rows, _book(tmp_path))
    assert len(table.splitlines()) == 1 + len(ids) and "⏎" in table  # newlines in tokens are shown, not printed
    with pytest.raises(CocomixError, match="context length"):
        inspect_ids(model, list(range(65)), _decode)
    with pytest.raises(CocomixError, match="--top"):
        inspect_ids(model, ids, _decode, top=C + 1)


def test_inspect_refuses_a_model_without_concepts() -> None:
    ntp = NTP(RunConfig(model=ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32),
                        data=DataConfig(seq_len=16))).build_model()
    with pytest.raises(CocomixError, match="expected a CoCoMix run"):
        inspect_ids(ntp, [1, 2], _decode)
    from cocomix.config import ConceptConfig
    from cocomix.interpret.compression import compression_norms
    from cocomix.methods import CoCoMix

    hidden = CoCoMix(RunConfig(method="cocomix", model=ntp.cfg, data=DataConfig(seq_len=16),
                               concept=ConceptConfig(target="hidden", concept_layer=1, d_teacher=16))).build_model()
    with pytest.raises(CocomixError, match="expected a CoCoMix run .* hidden-state ablation"):  # no concepts
        inspect_ids(hidden, [1, 2], _decode)
    with pytest.raises(CocomixError, match="hidden-state ablation"):
        compression_norms(hidden)


def test_html_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    rows = inspect_ids(_model(), [10, 3, 4], _decode, top=2)  # token 10 decodes to "<&\n"
    page = write_html(rows, _book(tmp_path), tmp_path / "p.html", "t <x>").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "&lt;&amp;" in page and "<x>" not in page
    for external in ("<script", "src=", "href=", "@import", "url(", "http:", "https:", "<link"):
        assert external not in page


def test_html_shades_by_the_top_concept_and_shows_its_context(tmp_path: Path) -> None:
    """Each token's shade is 4 × its top concept's probability (capped at 1), and the table's context column is
    the top concept's strongest teacher context (latent 3 has one in the test book, latent 5 none)."""
    rows = [TokenConcepts(0, "a", [(3, 2.0, 0.1), (5, 1.0, 0.05)]),
            TokenConcepts(1, "b", [(5, 3.0, 0.3), (3, 1.0, 0.1)])]
    page = write_html(rows, _book(tmp_path), tmp_path / "p.html", "t").read_text()
    assert re.findall(r"rgba\(255, 190, 60, ([0-9.]+)\)", page) == ["0.40", "1.00"]
    cells = re.findall(r"<tr><td>(\d)</td>.*?<td>([^<]*)</td></tr>", page)
    assert cells == [("0", html.escape("a «king» b")), ("1", "—")]


_BYTES = [*b"caf \xc3\xa9\xe2\x9c\x93<&"]  # token i is byte _BYTES[i % 11]: "é" and "✓" span several tokens


def _byte_decode(ids: list[int]) -> str:
    return bytes(_BYTES[i % 11] for i in ids).decode("utf-8", errors="replace")


def test_characters_split_over_byte_tokens_show_whole(tmp_path: Path) -> None:
    rows = inspect_ids(_model(), [0, 1, 2, 4, 5, 3, 6, 7, 8, 9, 10], _byte_decode, top=2)  # "café ✓<&"
    assert [r.token for r in rows] == ["c", "a", "f", "", "é", " ", "", "", "✓", "<", "&"]
    page = write_html(rows, _book(tmp_path), tmp_path / "p.html", "t").read_text()
    assert "\ufffd" not in page and "é" in page and "✓" in page and "&lt;" in page
    table = format_table(rows, _book(tmp_path))
    assert "\ufffd" not in table and "✓" in table
    # control characters in the text are escaped on the page (an ESC would make it invalid HTML); breaks stay
    page = write_html([TokenConcepts(0, "red\x1b[31m\nnext", [(3, 1.0, 0.5)])], _book(tmp_path),
                      tmp_path / "c.html", "t").read_text()
    assert "\x1b" not in page and 'red\\x1b[31m<span class="mark">⏎</span>\nnext' in page  # a break shows its mark
    # the key under the text says how to read a concept line, or that no labels were given
    assert "share of its strongest teacher contexts" in page
    bare = write_html([TokenConcepts(0, "a", [(3, 1.0, 0.5)])], ConceptBook.empty(C), tmp_path / "e.html", "t")
    assert "no describe-concepts labels were given (pass --concepts DIR)" in bare.read_text()
    # the title (a run folder's name, which Linux may hand over with a lone surrogate) is shown escaped too
    titled = write_html(rows, _book(tmp_path), tmp_path / "n.html", "run\udcff \u202eevil").read_text()
    assert "<title>run\\udcff \\u202eevil</title>" in titled and "\u202e" not in titled


def test_steered_continuations_reach_the_terminal_escaped() -> None:
    from cocomix.cli_interpret import _side_by_side

    shown = _side_by_side(("a", "ok \x1b[2J\x1b]0;pwned\x07 text \u202eevil\nline two"), ("b", "x"))
    assert "\x1b" not in shown and "\u202e" not in shown and "\\x1b[2J" in shown and "\\u202eevil" in shown
    assert shown.splitlines()[3].startswith("line two")
    # a continuation of whitespace only shows its marks, not a blank column
    blank = _side_by_side(("a", "   "), ("b", "\n\n\n"), width=30).splitlines()[2]
    assert blank == f"{'(3 whitespace characters: ␠␠␠)':<30} │ (3 whitespace characters: ⏎⏎⏎)"
    assert "(nothing generated)" in _side_by_side(("a", ""), ("b", "x"))


def test_steering_errors_name_the_problem() -> None:
    check_steering(C, [0, 79], [10.0, -10.0])
    for concepts, alphas, match in (([80], [1.0], "index in \\[0, 79\\]"), ([-1], [1.0], "index"),
                                    ([3, 3], [1.0, 1.0], "at most once"), ([3], [1.0, 2.0], "one α per concept"),
                                    ([3], [float("nan")], "finite"), ([3], [float("inf")], "finite"),
                                    ([], [], "at least one")):
        with pytest.raises(CocomixError, match=match):
            check_steering(C, concepts, alphas)


def test_concepts_and_alphas_chosen_with_numpy_are_taken() -> None:
    """Indices from np.argsort / an α from a numpy array are numbers too (they were "expected an index")."""
    import numpy as np

    model = _model()
    prompt = torch.randint(0, 97, (2, 6))
    check_steering(C, [np.int64(3), np.int32(5)], [np.float32(2.0), np.float64(-1.0)])
    got = steer_student(model, prompt, [np.int64(3)], [np.float32(5.0)], 4)
    assert torch.equal(got.tokens, steer_student(model, prompt, [3], [5.0], 4).tokens)
    with pytest.raises(CocomixError, match="index in"):
        check_steering(C, [np.int64(80)], [1.0])


def test_alpha_one_is_the_unsteered_model() -> None:
    model = _model()
    prompt = torch.randint(0, 97, (3, 8))
    plain, _ = generate(model, prompt, 12, temperature=0.0)
    steered = steer_student(model, prompt, [4, 9], [1.0, 1.0], 12)
    assert torch.equal(steered.tokens, plain) and model.seam._steer is None and model.seam.last_topk is None


def test_a_model_left_in_train_mode_is_read_without_dropout_and_left_as_it_came() -> None:
    run = RunConfig(method="cocomix", data=DataConfig(seq_len=16),
                    model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64, dropout=0.5),
                    concept=ConceptConfig(n_latents=C, concept_layer=2, mix_k=8, k_attr=4))
    model = CoCoMix(run).build_model().eval()
    prompt, ids = torch.randint(0, 97, (2, 6)), list(range(1, 13))
    want = steer_student(model, prompt, [3, 5], [3.0, 3.0], 10)
    rows = inspect_ids(model, ids, _decode)
    model.train()
    torch.manual_seed(0)
    got = steer_student(model, prompt, [3, 5], [3.0, 3.0], 10)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.mixed, want.mixed) and model.training
    assert inspect_ids(model, ids, _decode) == rows and model.training


def test_a_concept_outside_the_topk_is_reported_and_changes_nothing() -> None:
    model = _model()
    with torch.no_grad():  # concept 7's logit is always very negative: × 10 keeps it out of the TopK
        model.seam.predictor.weight[7].zero_()
        model.seam.predictor.bias[7] = -50.0
    prompt = torch.randint(0, 97, (2, 6))
    plain, _ = generate(model, prompt, 10, temperature=0.0)
    out = steer_student(model, prompt, [7], [10.0], 10)
    assert torch.equal(out.tokens, plain) and out.mixed.tolist() == [0.0]
    flipped = steer_student(model, prompt, [7], [-10.0], 10)  # −10 × −50 = 500: always selected, always mixed
    assert flipped.mixed.tolist() == [1.0] and not torch.equal(flipped.tokens, plain)


def test_a_concept_mixed_in_the_prompt_only_still_steers_the_continuation() -> None:
    """Steering edits every position, prompt included: a concept mixed at a prompt position alone (token X, never
    generated) is at 0% of the generating positions, yet removing it changes what follows through attention, so
    `ever_mixed` (what `steer`'s "no effect" note reads) is True; a concept never mixed anywhere is False."""
    model, X = _model(), 96
    with torch.no_grad():  # concept 7's logit is far above the others exactly where the residual holds X's direction
        v = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
        model.wte.weight[X] = 40 * v
        model.seam.predictor.weight[7] = 20 * v
        model.seam.predictor.bias[7] = -60.0
    prompt = torch.randint(0, X, (2, 6), generator=torch.Generator().manual_seed(3))
    prompt[:, 1] = X
    plain = steer_student(model, prompt, [7], [1.0], 10, vocab_limit=X)
    removed = steer_student(model, prompt, [7], [0.0], 10, vocab_limit=X)
    assert plain.mixed.tolist() == [0.0] and plain.ever_mixed.tolist() == [True]
    assert removed.ever_mixed.tolist() == [False]
    with torch.no_grad():  # the continuation is drawn from other logits once the prompt's concept is removed
        model.seam.steer(torch.tensor([7]), torch.tensor([0.0]))
        steered = model(plain.tokens).logits
        model.seam.steer(None)
        unsteered = model(plain.tokens).logits
    assert torch.equal(steered[:, :1], unsteered[:, :1]) and (steered[:, 5:] - unsteered[:, 5:]).abs().amax() > 1e-3
    assert steer_student(model, prompt, [8], [1.0], 10, vocab_limit=X).ever_mixed.dtype == torch.bool


@torch.no_grad()
def test_teacher_activity_counts_the_prompt_from_start_one() -> None:
    """A latent active at a prompt position alone: 0 at the generating positions (start = the prompt's length), but
    not at every position (start = 1), and its edit there moves the logits the continuation is drawn from."""
    teacher, sae = _teacher_and_sae()
    v = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(0)), dim=0)
    teacher.model.wte.weight[96] = 40 * v
    W_enc, bias = sae.W_enc.clone(), sae.latent_bias.clone()
    W_enc[5], bias[5] = v, 0.0
    sae.set_weights(pre_bias=torch.zeros(16), W_enc=W_enc, latent_bias=bias, W_dec=sae.W_dec.clone())
    prompt = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    prompt[:, 1] = 96
    tokens = steer_teacher(teacher, sae, prompt, [5], [1.0], 8, vocab_limit=96)
    assert teacher_activity(teacher, sae, tokens, 6, [5]).tolist() == [0.0]
    assert teacher_activity(teacher, sae, tokens, 1, [5]).item() == pytest.approx(2 / 26)  # position 1 of 13
    plain = teacher.model(tokens).logits
    hook = teacher.blocks[teacher.layer].register_forward_hook(_LatentScale(sae, [5], [-20.0]))
    steered = teacher.model(tokens).logits
    hook.remove()
    assert torch.equal(steered[:, :1], plain[:, :1]) and (steered[:, 5:] - plain[:, 5:]).abs().amax() > 1e-2


def _teacher_and_sae() -> tuple[Teacher, TopKSAE]:
    model = Transformer(ModelConfig(vocab_size=97, n_layer=3, n_head=2, d_model=16, context_length=64))
    sae = TopKSAE(16, 64, 4)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.5)
    return Teacher(model, 1), sae


@torch.no_grad()
def test_teacher_steering_scales_the_sae_latent_in_the_residual_stream() -> None:
    teacher, sae = _teacher_and_sae()
    prompt = torch.randint(0, 97, (2, 7))
    plain, _ = generate(teacher.model, prompt, 6, temperature=0.0)
    assert torch.equal(steer_teacher(teacher, sae, prompt, [5], [1.0], 6), plain)  # α = 1: unchanged
    assert not torch.equal(steer_teacher(teacher, sae, prompt, list(range(64)), [-5.0] * 64, 6), plain)
    h = torch.randn(2, 7, 16)
    values, indices, info = sae.encode(h)
    c = int(indices[0, 0, 0])
    a = (values * (indices == c)).sum(-1, keepdim=True)                              # (2, 7, 1)
    expected = h + 2.0 * a * info["std"] * sae.W_dec[:, c]                           # α = 3: + (3 − 1)·a·std·d_c
    got = _LatentScale(sae, [c], [3.0])(None, (), h)
    assert torch.allclose(got, expected, atol=1e-5) and not torch.equal(got, h)
    # with an orthonormal, un-normalised SAE the re-encoded latent is exactly α times the original
    exact = TopKSAE(16, 16, 4, normalize=False)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    exact.set_weights(pre_bias=torch.zeros(16), W_enc=q.T, latent_bias=torch.zeros(16), W_dec=q)
    v, i, _ = exact.encode(h)
    c = int(i[0, 0, 0])
    z, _ = exact.encode_dense(_LatentScale(exact, [c], [3.0])(None, (), h))
    assert torch.allclose(z[0, 0, c], 3 * v[0, 0, 0], rtol=1e-5)


def _hf_teacher_model(name: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=97, n_embd=16, n_layer=3, n_head=2, n_positions=64))
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=97, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                              num_key_value_heads=1, intermediate_size=32))


@pytest.mark.parametrize("kind", ["cocomix", "gpt2", "llama"])
@torch.no_grad()
def test_cached_teacher_steering_equals_full_recomputation(kind: str) -> None:
    """The KV-cache path feeds one token per step and draws the same tokens as recomputing the whole sequence,
    greedy and sampled, for a cocomix teacher and HF GPT-2 / Llama (`past_key_values`)."""
    teacher, sae = _teacher_and_sae()
    if kind != "cocomix":
        teacher = Teacher(_hf_teacher_model(kind), 1)
    prompt = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(1))
    widths: list[int] = []
    spy = teacher.model.register_forward_pre_hook(lambda m, args, kw: widths.append(
        (args[0] if args else kw["input_ids"]).shape[1]), with_kwargs=True)
    concepts, alphas = list(range(0, 64, 2)), [-6.0] * 32
    for temperature, top_k in ((0.0, None), (1.0, 20)):
        outs = {}
        for cached in (True, False):
            widths.clear()
            gen = torch.Generator().manual_seed(2)
            outs[cached] = steer_teacher(teacher, sae, prompt, concepts, alphas, 8, temperature, top_k, gen,
                                         use_cache=cached)
            assert widths == ([5] + [1] * 7 if cached else list(range(5, 13))), (cached, widths)
        assert torch.equal(outs[True], outs[False]), (kind, temperature)
        gen = torch.Generator().manual_seed(2)
        plain = steer_teacher(teacher, sae, prompt, concepts, [1.0] * 32, 8, temperature, top_k, gen)
        assert not torch.equal(plain, outs[True])  # the steering changed the continuation: the equality is not moot
    spy.remove()


def test_steering_summary_ratios() -> None:
    rows = [{"concept": c, "alpha": a, "activation_rate": r, "mixed": 0.5, "teacher_nll": 4.0 + a / 10}
            for c, rates in ((1, (0.05, 0.1, 0.4)), (2, (0.0, 0.1, 0.2))) for a, r in zip((-10.0, 0.0, 10.0),
                                                                                        rates, strict=True)]
    rows += [{"concept": c, "alpha": 1.0, "activation_rate": 0.1, "mixed": 0.5, "teacher_nll": 4.0} for c in (1, 2)]
    s = summarize(rows, (-10.0, 0.0, 1.0, 10.0))
    assert math.isclose(s["ratio_max_alpha_over_zero"], 0.3 / 0.1) and math.isclose(s["ratio_min_alpha_over_zero"],
                                                                                      0.025 / 0.1)
    assert math.isclose(s["fluency_cost_max_alpha"], 1.0) and "teacher_ratio_max_alpha_over_zero" not in s
    # per concept: #1 0.4 / 0.1 = 4×, #2 0.2 / 0.1 = 2×: geometric mean √8; α = −10: 0.5× and 0×
    assert s["per_concept_ratio_max_alpha_over_zero"] == pytest.approx({"1": 4.0, "2": 2.0})
    assert math.isclose(s["geomean_ratio_max_alpha_over_zero"], math.sqrt(8.0))
    assert s["geomean_ratio_min_alpha_over_zero"] == 0.0 and s["concepts_without_base"] == 0
    high = [r | {"activation_rate": 0.9} if r["concept"] == 2 else r for r in rows]  # one saturated concept
    h = summarize(high, (-10.0, 0.0, 1.0, 10.0))  # its 1× weighs most in the ratio of means, one vote in the other
    assert math.isclose(h["ratio_max_alpha_over_zero"], 1.3 / 1.0)
    assert math.isclose(h["geomean_ratio_max_alpha_over_zero"], 2.0)
    unseen = [r | {"activation_rate": 0.0} if r["concept"] == 2 and r["alpha"] == 0.0 else r for r in rows]
    u = summarize(unseen, (-10.0, 0.0, 1.0, 10.0))
    assert u["per_concept_ratio_max_alpha_over_zero"]["2"] is None and u["concepts_without_base"] == 1
    assert math.isclose(u["geomean_ratio_max_alpha_over_zero"], 4.0)
    for r in rows:  # the unsteered α = 1 at 0.2, apart from α = 0's 0.1: each ratio has its own base
        r["activation_rate"] = 0.2 if r["alpha"] == 1.0 else r["activation_rate"]
    s = summarize(rows, (-10.0, 0.0, 1.0, 10.0))
    assert math.isclose(s["ratio_max_alpha_over_one"], 0.3 / 0.2) and math.isclose(s["ratio_min_alpha_over_one"],
                                                                                     0.025 / 0.2)
    assert math.isclose(s["ratio_max_alpha_over_zero"], 0.3 / 0.1)
    for r in rows:
        r |= {"teacher_steered_rate": 0.2 if r["alpha"] == 10.0 else 0.1, "teacher_steered_nll": 4.0}
    s = summarize(rows, (-10.0, 0.0, 1.0, 10.0))
    assert math.isclose(s["teacher_ratio_max_alpha_over_zero"], 2.0)
    assert math.isclose(s["teacher_ratio_min_alpha_over_zero"], 1.0)


def test_compression_fraction_below_threshold(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.seam.compress_weight[:8] = 1e-4  # 8 of 80 rows: norm ≈ 5.7e-4 < 1e-2
    norms = compression_norms(model)
    assert norms.shape == (C,) and torch.allclose(norms[0], torch.tensor(1e-4 * 32 ** 0.5))
    summary = compression_report(model, tmp_path)
    assert math.isclose(summary["fraction_below"], 8 / C) and (tmp_path / "compression.png").stat().st_size > 1000
    assert re.search(r'"fraction_below": 0\.1', (tmp_path / "compression.json").read_text())
    # rows as initialised (N(0, 0.02²) entries) have norms near 0.02·√32; rows training moved do not
    initial = model.cfg.init_std * 32 ** 0.5
    assert math.isclose(summary["initial_norm"], initial) and summary["fraction_near_initial"] == 0.0
    with torch.no_grad():
        torch.manual_seed(0)
        model.seam.compress_weight[16:].normal_(0.0, model.cfg.init_std)
    near = compression_report(model, tmp_path)["fraction_near_initial"]
    expected = ((compression_norms(model)[16:] - initial).abs() <= 0.1 * initial).sum().item() / C
    assert near == expected and 0.3 < near < 64 / C  # most of the 64 re-initialised rows, none of the others
    ranked = sorted(compression_norms(model).tolist())  # 80 norms: median between the 40th and 41st
    q = json.loads((tmp_path / "compression.json").read_text())["quantiles"]
    assert (q["min"], q["max"]) == pytest.approx((ranked[0], ranked[-1]))
    assert q["median"] == pytest.approx((ranked[39] + ranked[40]) / 2) and ranked[3] <= q["p05"] <= ranked[4]


def _seeded_teacher_and_sae() -> tuple[Teacher, TopKSAE]:
    """A random 2-block teacher (d 16) read at block 0 and a random SAE (24 latents, k 6) on it."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=2, d_model=16, context_length=32)
    teacher = Teacher(Transformer(cfg), layer=0)
    sae = TopKSAE(16, 24, 6)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.5)
    return teacher, sae


def test_teacher_activity_counts_the_generating_positions() -> None:
    """Where the teacher's steering acts: positions start − 1 … S − 2 whose latent is active, against a direct
    count (position S − 1 predicts no generated token and is left out)."""
    from cocomix.interpret.steer import teacher_activity

    teacher, sae = _seeded_teacher_and_sae()
    tokens, start = torch.randint(0, 97, (2, 14)), 5
    got = teacher_activity(teacher, sae, tokens, start, list(range(24)))
    values, indices, _ = sae.encode(teacher.hidden(tokens))
    want = torch.zeros(24)
    for b in range(2):
        for t in range(start - 1, 13):
            for v, i in zip(values[b, t].tolist(), indices[b, t].tolist(), strict=True):
                want[i] += v > 0
    assert torch.allclose(got, want / (2 * 9)) and 0 < float(got.sum())


def test_read_continuations_counts_generated_positions_only() -> None:
    """The steering metric's reader: a concept's activation rate over the continuation positions (never the
    prompt), active meaning in the SAE's top k with a positive value, and the teacher's NLL of the continuation,
    each against a direct position-by-position computation."""
    from cocomix.interpret.steer_eval import read_continuations

    teacher, sae = _seeded_teacher_and_sae()
    tokens = torch.randint(0, 97, (3, 20))
    start, concepts = 8, list(range(24))
    rates, nll = read_continuations(teacher, sae, tokens, start, concepts)
    hidden = teacher.hidden(tokens)
    values, indices, _ = sae.encode(hidden)
    want = torch.zeros(24)
    for b in range(3):
        for t in range(start, 20):
            for v, i in zip(values[b, t].tolist(), indices[b, t].tolist(), strict=True):
                if v > 0:
                    want[i] += 1
    assert torch.allclose(rates, want / (3 * (20 - start)))
    with torch.no_grad():
        logp = torch.log_softmax(teacher.model(tokens).logits.double(), -1)
    direct = -sum(float(logp[b, t - 1, tokens[b, t]]) for b in range(3) for t in range(start, 20)) / (3 * 12)
    assert nll == pytest.approx(direct, rel=1e-5)


def test_a_prediction_only_run_refuses_steering_and_compression() -> None:
    """concept.mixing=none never mixes its concepts: steering and the compression analysis have nothing to act on."""
    run = RunConfig(method="cocomix", data=DataConfig(seq_len=16),
                    model=ModelConfig(vocab_size=97, n_layer=4, n_head=4, d_model=32, context_length=64),
                    concept=ConceptConfig(n_latents=C, concept_layer=2, mix_k=8, k_attr=4, mixing="none"))
    model = CoCoMix(run).build_model().eval()
    with pytest.raises(CocomixError, match="mixing=none .* steering"):
        steer_student(model, torch.randint(0, 97, (1, 4)), [3], [10.0], 4)
    with pytest.raises(CocomixError, match="mixing=none .* compression analysis"):
        compression_norms(model)
    assert len(inspect_ids(model, [1, 2, 3], _decode, top=2)) == 3  # inspecting its predictions still works


def test_labels_and_tables_show_control_characters_visibly() -> None:
    from cocomix.interpret.labels import visible

    assert visible("a\r\nb\x1b[31mc\u200bd\te") == "a␍⏎b\\x1b[31mc\\u200bd⇥e"
    assert visible("plain ünïcode 日本") == "plain ünïcode 日本"


def test_steering_plot_takes_labels_with_dollar_signs(tmp_path: Path) -> None:
    """Corpus labels are text, not matplotlib mathtext ("$$" used to abort the plot after all the generation)."""
    from cocomix.interpret.steer_eval import write_steering_report

    rows = [{"concept": 3, "alpha": a, "activation_rate": r, "mixed": 0.5, "teacher_nll": 4.0}
            for a, r in ((0.0, 0.1), (1.0, 0.2), (10.0, 0.3))]
    result = {"config": {"alphas": [0.0, 1.0, 10.0], "n_prompts": 2, "max_new_tokens": 4, "temperature": 1.0,
                         "top_k": 50}, "concepts": [3], "rows": rows,
              "labels": {3: {"label": "«$$» 50%", "context": "", "frequency": 0.1}},
              "summary": summarize(rows, [0.0, 1.0, 10.0])}
    out = write_steering_report(result, tmp_path / "s")
    assert (out / "steering.png").stat().st_size > 1000 and "«$$»" in (out / "steering.md").read_text()
    # no negative α: the report states no "α = 0 vs α = 0" comparison
    assert "α = 10 vs α = 0: mean activation rate 3.00×." in (out / "steering.md").read_text()
    assert "α = 0 vs α = 0" not in (out / "steering.md").read_text()


@pytest.mark.parametrize("content", ['{"latents": [{"frequency": 0.1}]}', '{"latents": [1, 2]}', '{"latents": 5}',
                                     '{"latents": [{"latent": 0, "frequency": "often"}]}'])
def test_a_malformed_concepts_file_is_a_one_line_error(content: str, tmp_path: Path) -> None:
    (tmp_path / "concepts.json").write_text(content)
    with pytest.raises(CocomixError, match="not a describe-concepts concepts.json") as e:
        ConceptBook.load(tmp_path)
    assert "\n" not in str(e.value)


def test_a_null_example_text_is_read_as_no_text(tmp_path: Path) -> None:
    (tmp_path / "concepts.json").write_text('{"latents": [{"latent": 0, "examples": [{"text": null}]}]}')
    book = ConceptBook.load(tmp_path)
    assert len(book) == 1 and book[0].context == ""


class _Top1Model(torch.nn.Module):
    """A student whose top-1 concept at each position is given: window w's ids are all w."""

    def __init__(self, top1: list[list[int]], n_latents: int) -> None:
        super().__init__()
        self.top1, self.n_latents = top1, n_latents
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # (a device to run on)

    def forward(self, ids: torch.Tensor, concept_logits: bool = False) -> SimpleNamespace:
        assert concept_logits
        best = torch.tensor([self.top1[int(ids[0, 0])]])  # (1, T)
        logits = torch.nn.functional.one_hot(best, self.n_latents).float() * 5.0 - 1.0  # (1, T, C)
        return SimpleNamespace(aux={"concept_logits": logits})


def test_steer_eval_chooses_the_most_predicted_well_described_concepts_then_fills_with_fired_ones() -> None:
    top1 = [[3] * 10 + [1, 4], [1] * 5 + [5] * 4 + [0] * 2 + [3]]  # counts 3: 11, 1: 6, 5: 4, 0: 2, 4: 1, 2: 0
    store = SimpleNamespace(num_chunks=lambda split, T: 2,
                            batch=lambda split, ids, T: torch.full((len(ids), T), ids[0], dtype=torch.long))
    entry = lambda frequency, consistency: SimpleNamespace(frequency=frequency, consistency=consistency)  # noqa: E731
    book = [entry(0.1, 0.8), entry(0.2, 0.3), entry(0.1, 0.9), entry(0.3, 0.9), entry(0.0, 0.9), entry(0.1, 0.6)]
    model = _Top1Model(top1, 6)
    choose = lambda n, b=book: choose_concepts(model, store, b, n, "val", 12)  # noqa: E731
    assert choose(2) == [3, 5]  # by top-1 count among consistency >= 0.5 (1 is poorly described)
    assert choose(4) == [3, 5, 0, 1]  # then the most frequent other concepts that fired in the teacher
    assert choose(10) == [3, 5, 0, 1]  # never 4 (it never fired in the teacher) nor 2 (never predicted)
    assert choose_concepts(model, store, book, 2, "val", 12, windows=1) == [3, 1]  # window 0 only: 3, 1 and 4
    with pytest.raises(CocomixError, match="none of the student's predicted concepts ever fired"):
        choose(3, [entry(0.0, 1.0)] * 6)


def test_indices_from_numpy_and_torch_arrays_are_taken_whole() -> None:
    """`np.argsort(scores)[-2:]` and `torch.topk(...).indices` are what a user picks concepts with: read as the
    numbers they hold (not the truth value of an array, nor "expected an index" for a 0-d tensor in range)."""
    import numpy as np

    model, (teacher, sae) = _model(), _teacher_and_sae()
    prompt = torch.randint(0, 97, (2, 6))
    want = steer_student(model, prompt, [3, 5], [5.0, 5.0], 4)
    for concepts, alphas in ((np.array([3, 5]), np.array([5.0, 5.0])), (torch.tensor([3, 5]), torch.tensor([5.0, 5.0])),
                             ((3, 5), (5.0, 5.0))):
        got = steer_student(model, prompt, concepts, alphas, 4)
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.mixed, want.mixed)
    one = steer_student(model, prompt, torch.tensor(3), torch.tensor(5.0), 4)
    assert torch.equal(one.tokens, steer_student(model, prompt, [3], [5.0], 4).tokens)
    assert torch.equal(steer_teacher(teacher, sae, prompt, np.array([5]), np.array([3.0]), 3),
                       steer_teacher(teacher, sae, prompt, [5], [3.0], 3))
    with pytest.raises(CocomixError, match=r"--concept: expected an index in \[0, 79\], got 80"):
        check_steering(C, np.array([80]), np.array([1.0]))


def test_the_mixed_share_leaves_out_the_padding_after_a_rows_end_of_text() -> None:
    """`generate` pads a row that drew the end-of-text token with it until every row ends: those are no generating
    positions, so `mixed` counts the real ones only (and equals the share over all of them without an eos_id)."""
    model = _model()
    prompt = torch.randint(0, 97, (2, 6))
    plain = steer_student(model, prompt, [3, 8], [1.0, 1.0], 12)
    eos = int(plain.tokens[0, 8])  # row 0's third new token ends it
    out = steer_student(model, prompt, [3, 8], [1.0, 1.0], 12, eos_id=eos)
    tokens, P = out.tokens, prompt.shape[1]
    with torch.no_grad():  # the mix_k = 8 concepts each position mixed
        topk = torch.topk(model(tokens, concept_logits=True).aux["concept_logits"], 8, dim=-1).indices  # (B, S, 8)
    hits = (topk[:, :-1, :, None] == torch.tensor([3, 8])).any(dim=2)                     # (B, S - 1, 2)
    real = torch.ones(hits.shape[:2], dtype=torch.bool)
    for b in range(2):
        ends = (tokens[b, P:-1] == eos).nonzero()
        if len(ends):
            real[b, P + int(ends[0]):] = False  # generating from the end-of-text token: padding
    want = (hits & real[..., None])[:, P - 1:].sum(dim=(0, 1)) / real[:, P - 1:].sum()
    assert not real.all() and torch.allclose(out.mixed, want)
    assert torch.equal(out.ever_mixed, (hits & real[..., None]).flatten(0, 1).any(dim=0))


@torch.no_grad()
def test_the_teacher_edit_acts_where_the_activity_count_says_a_latent_is_active() -> None:
    """An SAE without a ReLU (OpenAI's `Identity` post-activation) can hold a latent in its TopK with a negative
    value: not active for `teacher_activity`, so not edited either (a latent that is not active is unchanged)."""
    sae = TopKSAE(16, 64, 32, postact="identity")
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0.0, 0.5)
    h = torch.randn(2, 7, 16)
    values, indices, _ = sae.encode(h)
    negative = values < 0
    assert negative.any()
    c = int(indices[negative][0])
    only_negative = not ((indices == c) & (values > 0)).any()
    got = _LatentScale(sae, [c], [10.0])(None, (), h)
    edited = (got - h).abs().amax(dim=-1) > 0                                               # (2, 7)
    assert torch.equal(edited, ((indices == c) & (values > 0)).any(dim=-1)) and (only_negative or edited.any())


def test_library_steering_and_inspection_check_their_token_ids_up_front() -> None:
    teacher, sae = _teacher_and_sae()
    model = _model()
    for prompt, said in ((torch.tensor([[1, 120]]), "token id 120 is outside the model's vocabulary"),
                         (torch.tensor([[1.0, 2.0]]), "integer")):
        with pytest.raises(CocomixError, match=said):
            steer_teacher(teacher, sae, prompt, [5], [3.0], 2)
    with pytest.raises(CocomixError, match="prompt \\+ max_new_tokens: 70 tokens exceed the teacher's 64 positions"):
        steer_teacher(teacher, sae, torch.randint(0, 97, (1, 10)), [5], [3.0], 60)
    with pytest.raises(CocomixError, match="vocab_limit"):
        steer_teacher(teacher, sae, torch.randint(0, 97, (1, 4)), [5], [3.0], 2, vocab_limit=0)
    with pytest.raises(CocomixError, match="--text: token id 200 is outside the model's vocabulary"):
        inspect_ids(model, [1, 200], _decode)
    with pytest.raises(CocomixError, match="prompt: expected a \\(batch, tokens\\) tensor"):
        steer_student(model, [[1, 2], [3]], [3], [2.0], 2)
