"""`cocomix inspect`: the concepts a CoCoMix student predicts at every token (paper §3.2, Eq. 2's head).

For a text, the student's concept logits z_t (T, C) come from its hidden state entering `concept_layer`; per
token we show the `top` largest with their softmax probability over the C concepts and, when a describe-concepts
report is given, each concept's label (`labels.ConceptBook`). Output is a terminal table and a self-contained
HTML page (inline CSS only: no scripts, fonts, images or links to fetch), where hovering a token shows its
concepts.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cocomix.atomic import atomic_write_text
from cocomix.data.tokenizer import token_texts
from cocomix.errors import CocomixError
from cocomix.interpret.labels import ConceptBook, visible
from cocomix.model import Transformer
from cocomix.model.concept import ConceptSeam


@dataclass(frozen=True)
class TokenConcepts:
    position: int
    token: str
    """The text the token adds ('' for a token holding only some of a character's bytes: the character shows at
    the token that completes it; see `cocomix.data.tokenizer.token_texts`)."""
    concepts: list[tuple[int, float, float]]
    """(latent, logit, probability) of the top predicted concepts, strongest first."""


def concept_seam(model: Transformer) -> ConceptSeam:
    """The model's concept seam, or a clear error for models without one (NTP, KD, pause, hidden ablation)."""
    if not isinstance(model.seam, ConceptSeam):
        kind = {None: "a plain LM (NTP or KD)", "PauseSeam": "a pause-token model",
                "HiddenSeam": "the hidden-state ablation"}.get(type(model.seam).__name__ if model.seam else None,
                                                                 type(model.seam).__name__)
        raise CocomixError(f"RUN: expected a CoCoMix run that predicts concepts, got {kind}")
    return model.seam


def mixing_seam(model: Transformer, what: str) -> ConceptSeam:
    """The concept seam of a run that mixes its concepts (steering, compression analysis), else a clear error."""
    seam = concept_seam(model)
    if seam.mixing == "none":
        raise CocomixError(f"RUN: trained with concept.mixing=none (prediction only): its concepts are never mixed "
                           f"into the model, so {what} has nothing to act on")
    return seam


@contextmanager
def eval_mode(model: Transformer) -> Iterator[None]:
    """The model in eval mode (no dropout) for what is read off it, and back in the mode it came in afterwards: a
    library caller's model left in train mode must not give dropout-perturbed concepts."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def inspect_ids(model: Transformer, ids: list[int], decode: Callable[[list[int]], str],
                top: int = 5) -> list[TokenConcepts]:
    """Top `top` predicted concepts at each of the token ids (one window, at most the context length)."""
    seam = concept_seam(model)
    if not ids:
        raise CocomixError("--text: encodes to no tokens; give some text")
    if len(ids) > model.cfg.context_length:
        raise CocomixError(f"--text: {len(ids)} tokens, more than the model's context length "
                           f"{model.cfg.context_length}; give a shorter text")
    if not 0 < top <= seam.n_latents:
        raise CocomixError(f"--top: expected 1..{seam.n_latents}, got {top}")
    from cocomix.model.generate import check_ids

    check_ids(torch.tensor(ids), model.cfg.vocab_size, "--text")  # (a store of another tokenizer's ids)
    device = next(model.parameters()).device
    with eval_mode(model):
        out = model(torch.tensor([ids], device=device), concept_logits=True)
    logits = out.aux["concept_logits"][0].float()                                        # (T, C)
    probs = torch.softmax(logits, dim=-1)                                                # (T, C)
    values, indices = torch.topk(logits, top, dim=-1)                                    # (T, top)
    rows = []
    for t, text in enumerate(token_texts(decode, ids)):
        picked = [(int(c), float(v), float(probs[t, c])) for v, c in zip(values[t], indices[t], strict=True)]
        rows.append(TokenConcepts(t, text, picked))
    return rows


PART = "⋯"
"""How the table shows a token that holds only part of a character (the character is at the next token)."""


def _show(text: str) -> str:
    return visible(text) if text else PART


def format_table(rows: list[TokenConcepts], book: ConceptBook) -> str:
    """Fixed-width table: position, token, then `#latent logit p label` per predicted concept."""
    width = max([len(_show(r.token)) for r in rows] + [5])
    described = any(book[c].described for r in rows for c, _, _ in r.concepts)
    labels = "«activating token» share" if described else "- = no describe-concepts labels: pass --concepts DIR"
    lines = [f"{'pos':>4}  {'token':<{width}}  top predicted concepts (#latent logit p {labels})"]
    for r in rows:
        cells = [f"#{c} {z:+.2f} {p:.2f} {book[c].short()}" for c, z, p in r.concepts]
        lines.append(f"{r.position:>4}  {_show(r.token):<{width}}  " + " | ".join(cells))
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 72em; color: #222; }
.text { font-family: ui-monospace, monospace; line-height: 2.2; white-space: pre-wrap; }
.tok { position: relative; border-bottom: 2px solid #8ab; padding: 0 1px; }
.tok:hover { background: #def; }
.part { display: inline-block; width: .4em; }
.mark { color: #999; }
.tip { display: none; position: absolute; left: 0; top: 1.8em; z-index: 1; background: #fff; border: 1px solid #999;
       padding: .4em .6em; white-space: pre; font-size: 12px; line-height: 1.4; box-shadow: 2px 2px 6px #aaa; }
.tok:hover .tip { display: block; }
table { border-collapse: collapse; font-size: 13px; margin-top: 2em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
td.concepts { white-space: nowrap; font-family: ui-monospace, monospace; font-size: 12px; }
.key { font-size: 13px; color: #555; }
code { background: #f4f4f4; }
"""


_GENERATOR = '<meta name="generator" content="cocomix inspect">'


def is_inspect_page(path: Path) -> bool:
    """Whether the file at `path` is a page `write_html` wrote (which `inspect --html` may replace)."""
    try:
        with open(path, "rb") as fh:
            return _GENERATOR.encode() in fh.read(4096)
    except OSError:
        return False


def _key(rows: list[TokenConcepts], book: ConceptBook) -> str:
    """How to read a concept line of the page."""
    key = ("Each concept: #SAE latent, the student's predicted logit, its probability p (softmax over all "
           "concepts), ")
    if any(book[c].described for r in rows for c, _, _ in r.concepts):
        return html.escape(key + "then the teacher token that most often activates the latent, «marked», and the "
                           "share of its strongest teacher contexts where it is that token (how well one token "
                           "describes it).")
    return html.escape(key + "then - : no describe-concepts labels were given (pass --concepts DIR).")


def write_html(rows: list[TokenConcepts], book: ConceptBook, path: str | Path, title: str) -> Path:
    """A single HTML file with no external resources: the text with hover tooltips, then the full table."""
    def concept_line(c: int, z: float, p: float) -> str:
        return f"#{c}  logit {z:+.2f}  p {p:.3f}  {book[c].short()}"

    spans = []
    for r in rows:
        tip = "\n".join(concept_line(*x) for x in r.concepts)
        alpha = min(1.0, r.concepts[0][2] * 4) if r.concepts else 0.0  # shade by the top concept's probability
        text = html.escape(visible(r.token, keep="\n\t"))  # breaks and tabs kept, other control characters escaped
        # a line break shows its mark before breaking, so a newline token has something to hover
        text = text.replace("\n", '<span class="mark">⏎</span>\n')
        kind = "tok" if r.token else "tok part"  # part of a character: a narrow mark that can still be hovered
        spans.append(f'<span class="{kind}" style="background: rgba(255, 190, 60, {alpha:.2f})">'
                     f'{text}<span class="tip">{html.escape(tip)}</span></span>')
    table = ["<table><tr><th>pos</th><th>token</th><th>top predicted concepts</th>"
             "<th>strongest teacher context of the top concept</th></tr>"]
    for r in rows:
        cells = "<br>".join(html.escape(concept_line(*x)) for x in r.concepts)
        ctx = book[r.concepts[0][0]].context if r.concepts else ""
        table.append(f"<tr><td>{r.position}</td><td><code>{html.escape(_show(r.token))}</code></td>"
                     f"<td class=\"concepts\">{cells}</td>"
                     f"<td>{html.escape(visible(ctx) if ctx else '—')}</td></tr>")
    table.append("</table>")
    title = visible(title)  # (a run folder's name: no bidi override, and a lone surrogate cannot be written)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{_GENERATOR}"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Hover a token to see the concepts the student predicts there "
            "(shade: probability of the top concept).</p>"
            f"<div class=\"text\">{''.join(spans)}</div><p class=\"key\">{_key(rows, book)}</p>{''.join(table)}"
            "</body></html>\n")
    out = Path(path)
    atomic_write_text(out, page)
    return out
