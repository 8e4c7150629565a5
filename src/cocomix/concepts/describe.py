"""Concept descriptions: per SAE latent, how often it fires and the contexts where it fires most strongly
(what paper §3.2 reads concepts by; no paper equation).

`describe_concepts` streams windows of a token store through the frozen teacher (forward only, up to
`teacher_layer`'s output) and the SAE, counts each latent's activations (frequency = active positions / all
positions) and keeps its `top_n` strongest activations with their (split, window, position), and measures how well
the SAE reconstructs those activations (FVU, `sae/fit.py`). `write_report`
decodes those into text snippets — the activating token marked «like this» with `context` tokens on each side —
and writes `concepts.json` (every example) and a readable `concepts.md` (an example whose snippet repeats an
earlier one's shown once, with its count), so that steering and inspection can name concepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cocomix.atomic import atomic_write_text
from cocomix.concepts.attribution import SAE_CHUNK_ELEMENTS
from cocomix.data import TokenStore
from cocomix.data.tokenizer import token_in_context
from cocomix.errors import ConfigError, DataError
from cocomix.progress import ProgressLine
from cocomix.sae.fit import FVUSums, warn_if_unfit
from cocomix.shown_text import visible
from cocomix.train import distributed as dd
from cocomix.train.distributed import DistContext

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher


def check_describe_args(batch_size: int, top_n: int, max_windows: int) -> None:
    """ConfigError naming the flag when a count is out of range."""
    for flag, value, least in (("--batch-size", batch_size, 1), ("--top-n", top_n, 1),
                               ("--max-windows", max_windows, 0)):
        if value < least:
            raise ConfigError(f"{flag}: expected an integer >= {least}, got {value}")
    if top_n > 1000:  # (latents × top_n buffers are allocated up front: 32768 latents × 1000 are ~0.7 GB)
        raise ConfigError(f"--top-n: expected at most 1000 contexts per latent, got {top_n}")


@torch.no_grad()
def describe_concepts(store: TokenStore, teacher: Teacher, sae: TopKSAE, seq_len: int, split: str = "val",
                      max_windows: int = 0, batch_size: int = 8, top_n: int = 8,
                      progress: bool = True, ctx: DistContext | None = None) -> dict[str, torch.Tensor]:
    """Activation counts (C,) and the top_n strongest activations per latent: values (C, top_n) (−inf where
    fewer), windows (C, top_n), positions (C, top_n); also the number of positions seen. Equal activations rank
    by window, then position (the earlier first). Under torchrun (`ctx`: every rank calls this) rank r reads every
    world_size-th batch and the ranks' counts, FVU sums and top lists are combined on every rank: what one process
    finds (the FVU up to the order of its float64 sums)."""
    ctx = ctx or DistContext()
    check_describe_args(batch_size, top_n, max_windows)
    teacher.check_store(store, seq_len)
    if sae.d_in != teacher.width:
        raise ConfigError(f"SAE input width {sae.d_in} does not match the teacher's residual width {teacher.width} "
                          f"at teacher_layer {teacher.layer}")
    C = sae.n_latents
    n = store.num_chunks(split, seq_len)
    if n == 0:
        raise DataError(f"{store.path}: the {split} split holds no whole window of {seq_len} tokens; use a "
                        "smaller --seq-len")
    n = min(n, max_windows) if max_windows else n
    counts = torch.zeros(C, dtype=torch.int64)
    top_val = torch.full((C, top_n), float("-inf"))
    top_win = torch.full((C, top_n), -1, dtype=torch.int64)
    top_pos = torch.full((C, top_n), -1, dtype=torch.int64)
    latent_of_slot = torch.arange(C).repeat_interleave(top_n)  # (C·top_n,)
    fvu = FVUSums()
    line = ProgressLine("describe-concepts", n, enabled=progress and ctx.is_main)
    for start in range(ctx.rank * batch_size, n, ctx.world_size * batch_size):
        chunk_ids = list(range(start, min(n, start + batch_size)))
        ids = store.batch(split, chunk_ids, seq_len).to(teacher.device)
        hidden = teacher.hidden(ids).to(sae.W_dec.dtype)  # (b, T, d)
        b, T, d = hidden.shape
        flat = hidden.reshape(1, b * T, d)
        rows = max(1, SAE_CHUNK_ELEMENTS // (2 * C))  # bounds the SAE's (rows, C) pre-activations, as compute_targets
        parts = []
        for s in range(0, b * T, rows):
            x = flat[0, s:s + rows]  # (n, d)
            v, i, info = sae.encode(x)  # (n, k) each
            later = torch.arange(s, s + x.shape[0], device=x.device) % T != 0  # position 0 left out of the FVU
            fvu.add(sae, x[later], v[later], i[later], {key: t[later] for key, t in info.items()})
            parts.append((v[None], i[None]))  # (1, n, k) each
        values = torch.cat([v for v, _ in parts], dim=1).reshape(b, T, -1).float().cpu()  # (b, T, k)
        indices = torch.cat([i for _, i in parts], dim=1).reshape(b, T, -1).cpu()         # (b, T, k)
        live = values > 0  # a TopK slot whose ReLU output is 0 is not an activation
        counts += torch.bincount(indices[live], minlength=C)
        k = values.shape[-1]
        win = torch.tensor(chunk_ids)[:, None, None].expand(b, T, k)
        pos = torch.arange(T)[None, :, None].expand(b, T, k)
        _merge_top((top_val, top_win, top_pos), latent_of_slot, indices[live], values[live], win[live], pos[live])
        line.update(min(n, start + batch_size))
    line.close()
    if ctx.active:  # every rank's counts, FVU sums and top lists, combined alike on every rank
        counts = dd.sum_over_ranks(counts.to(teacher.device), ctx).cpu()
        fvu.reduce(lambda t: dd.sum_over_ranks(t.to(teacher.device), ctx).cpu(), sae.d_in)
        theirs = [torch.cat(dd.gather_rows(t.to(teacher.device)[None], 1, ctx)).cpu()  # (W, C, top_n)
                  for t in (top_val, top_win, top_pos)]
        lat = latent_of_slot.repeat(ctx.world_size)
        top_val, top_win, top_pos = (torch.full_like(t, fill) for t, fill in
                                     ((top_val, float("-inf")), (top_win, -1), (top_pos, -1)))
        found = theirs[1].flatten() >= 0
        _merge_top((top_val, top_win, top_pos), latent_of_slot, lat[found],
                   *(t.flatten()[found] for t in theirs))
    warn_if_unfit(fvu.value(), sae, teacher.layer, "--sae")
    return {"counts": counts, "positions": torch.tensor(n * seq_len), "values": top_val, "windows": top_win,
            "token_positions": top_pos, "fvu": torch.tensor(fvu.value(), dtype=torch.float64)}


def _merge_top(top: tuple[torch.Tensor, torch.Tensor, torch.Tensor], latent_of_slot: torch.Tensor,
               lat: torch.Tensor, val: torch.Tensor, win: torch.Tensor, pos: torch.Tensor) -> None:
    """Merge activations (N,) — latent, value, window, position — into the running top lists (values, windows,
    positions, each (C, top_n), in place): per latent the top_n largest values, ties by window then position."""
    top_val, top_win, top_pos = top
    C, top_n = top_val.shape
    lat = torch.cat((latent_of_slot, lat))
    val, w, p = torch.cat((top_val.flatten(), val)), torch.cat((top_win.flatten(), win)), torch.cat(
        (top_pos.flatten(), pos))
    # sorted by position, window, value (descending), then latent: each a stable sort, so the later keys decide
    order = torch.sort(p, stable=True).indices
    for key, descending in ((w, False), (val, True), (lat, False)):
        order = order[torch.sort(key[order], descending=descending, stable=True).indices]
    lat, val, w, p = lat[order], val[order], w[order], p[order]  # grouped by latent, strongest first
    first = torch.searchsorted(lat, torch.arange(C))  # start of each latent's group
    rank = torch.arange(lat.numel()) - first[lat]
    keep = rank < top_n
    slot = lat[keep] * top_n + rank[keep]
    top_val.view(-1)[slot], top_win.view(-1)[slot], top_pos.view(-1)[slot] = val[keep], w[keep], p[keep]


def write_report(stats: dict[str, torch.Tensor], store: TokenStore, out_dir: str | Path, split: str, seq_len: int,
                 context: int = 12, meta: dict[str, Any] | None = None) -> Path:
    """concepts.json (every latent) and concepts.md (latents that fired, most frequent first) in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = store.tokenizer()
    tokens = store.tokens(split)
    total = int(stats["positions"])
    latents = []
    for i in range(stats["counts"].numel()):
        examples = []
        for v, w, p in zip(stats["values"][i].tolist(), stats["windows"][i].tolist(),
                           stats["token_positions"][i].tolist(), strict=True):
            if w < 0:
                continue
            at = w * seq_len + p
            a = max(w * seq_len, at - context)
            window = tokens[a:min((w + 1) * seq_len, at + 1 + context)].tolist()
            left, here, right = token_in_context(tok.decode, window, at - a)  # whole characters, not bytes
            examples.append({"activation": round(v, 5), "window": w, "position": p, "token": here,
                             "text": f"{left}«{here}»{right}"})
        latents.append({"latent": i, "count": int(stats["counts"][i]),
                        "frequency": int(stats["counts"][i]) / max(1, total), "examples": examples})
    fvu = float(stats["fvu"]) if "fvu" in stats else None
    report = {"split": split, "positions": total, "fvu": fvu, **(meta or {}), "latents": latents}
    atomic_write_text(out / "concepts.json", json.dumps(report, indent=1, ensure_ascii=False))
    fired = sorted((c for c in latents if c["count"]), key=lambda c: -c["count"])
    dead = len(latents) - len(fired)
    lines = [f"# Concepts ({len(latents)} latents, {total:,} positions of split `{split}`)", "",
             f"{len(fired)} latents fired at least once; {dead} never fired ({dead / max(1, len(latents)):.1%}).",
             *([] if fvu is None else [f"The SAE leaves {fvu:.4f} of the variance of these activations unexplained "
                                       "(FVU in its normalised input space; each window's position 0 left out)."]),
             "The activating token is marked «like this».", ""]
    for c in fired:
        lines.append(f"## Latent {c['latent']}: frequency {c['frequency']:.3%} ({c['count']} positions)")
        lines.append("")
        shown: dict[str, list] = {}  # a repeated passage (a refrain, a stage direction) once, with its count
        kept: list[tuple[int, int, str]] = []  # (window, position, text) of the snippets shown
        for ex in c["examples"]:  # strongest first
            near = next((t for w, p, t in kept if w == ex["window"] and abs(p - ex["position"]) <= context), None)
            if ex["text"] not in shown and near is not None:  # the passage of a stronger one, at a neighbouring
                shown[near][2] += 1  # token: counted with it
                continue
            kept.append((ex["window"], ex["position"], ex["text"]))
            shown.setdefault(ex["text"], [ex["activation"], 0, 0])[1] += 1
        for text, (activation, times, neighbours) in shown.items():
            text = visible(text.replace("\n", " ⏎ ")).replace("|", "\\|")  # (an ANSI escape in the corpus: shown)
            lines.append(f"- {activation:.3f}: {text}" + (f" (×{times})" if times > 1 else "")
                         + (f" (+{neighbours} at neighbouring tokens)" if neighbours else ""))
        lines.append("")
    atomic_write_text(out / "concepts.md", "\n".join(lines) + "\n")
    return out
