"""The interpretability subcommands of `cocomix` (see `cli.py`): inspect, steer, steer-eval, compression.

Thin wrappers of `cocomix.interpret`; `add_interpret_commands` registers them on the main parser.

No paper equation.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocomix import json_text
from cocomix.atomic import check_out_folder
from cocomix.cli_parser import DEVICE_HELP, add_run, seed_arg, utf8_text
from cocomix.errors import CocomixError
from cocomix.seeding import torch_seed

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher


def _open(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Path]:
    """(run config, model, token store, concept book, checkpoint folder) for a CoCoMix run."""
    from cocomix.data.store import check_vocab
    from cocomix.interpret.inspect import concept_seam
    from cocomix.interpret.labels import ConceptBook
    from cocomix.runs import load_run, run_store
    from cocomix.train.device import resolve_device

    run, _, model, ckpt = load_run(args.run, device=resolve_device(args.device, "--device"))
    seam = concept_seam(model)
    store = run_store(run, args.data, ckpt)
    check_vocab(store, run.model.vocab_size)
    book = ConceptBook.load(args.concepts) if args.concepts else ConceptBook.empty(seam.n_latents)
    if len(book) != seam.n_latents:
        raise CocomixError(f"--concepts: describes {len(book)} latents, the student predicts {seam.n_latents}")
    c = run.concept
    book.check_source(c.sae, c.teacher, c.teacher_layer, str(args.concepts))
    return run, model, store, book, ckpt


def cmd_inspect(args: argparse.Namespace) -> int:
    from cocomix.interpret.inspect import format_table, inspect_ids, is_inspect_page, write_html

    if args.max_tokens is not None and args.max_tokens < 1:
        raise CocomixError(f"--max-tokens: expected an integer >= 1, got {args.max_tokens}")
    if args.html:  # a page that cannot be written is said before the table, not after it
        html = Path(args.html)
        if html.is_dir() or not html.parent.is_dir():
            raise CocomixError(f"--html {html}: " + ("a folder; give a file name" if html.is_dir() else
                                                     f"{html.parent} is a file, not a folder" if
                                                     html.parent.exists() else
                                                     f"its folder {html.parent} does not exist"))
        if html.is_file() and not is_inspect_page(html):  # a mistyped path must not replace a config or report
            raise CocomixError(f"--html {html}: exists and is not a page `cocomix inspect` wrote; give a new file "
                               "name (or remove the file)")
    run, model, store, book, ckpt = _open(args)
    tok = store.tokenizer()
    context = model.cfg.context_length
    if args.max_tokens is not None and args.max_tokens > context:
        raise CocomixError(f"--max-tokens: expected at most the model's context length {context}, got "
                           f"{args.max_tokens}")
    max_tokens = args.max_tokens or min(64, context)
    if args.text is not None:
        ids = tok.encode(args.text)
        if len(ids) > max_tokens:
            print(f"cocomix: note: --text is {len(ids)} tokens; its first {max_tokens} are shown "
                  "(--max-tokens)", file=sys.stderr)
            ids = ids[:max_tokens]
    else:
        n = store.num_chunks("val", run.data.seq_len)
        if n == 0:
            raise CocomixError(f"{store.path}: its val split holds no window of the run's seq_len "
                               f"{run.data.seq_len} tokens; pass --text")
        if not 0 <= args.val_window < n:
            raise CocomixError(f"--val-window: expected 0..{n - 1}, got {args.val_window}")
        ids = store.batch("val", [args.val_window], run.data.seq_len)[0, :max_tokens].tolist()
    rows = inspect_ids(model, ids, tok.decode, top=args.top)
    print(format_table(rows, book))
    if args.html:
        try:
            path = write_html(rows, book, args.html, f"Concepts predicted by {Path(args.run).name}")
        except OSError as e:
            raise CocomixError(f"--html {args.html}: cannot write the page ({e.strerror or e})") from None
        print(f"html: {path}")
    return 0


def _side_by_side(left: tuple[str, str], right: tuple[str, str], width: int = 44) -> str:
    """Two continuations in columns; control and format characters of the generated text (an ANSI escape, a
    right-to-left override) shown as escapes, as every other corpus text printed to the terminal; one of whitespace
    only by its marks (blank columns otherwise)."""
    from cocomix.shown_text import visible, whitespace_only

    wrap = lambda text: sum((textwrap.wrap(visible(line), width) or [""]  # noqa: E731
                             for line in (whitespace_only(text, 4 * width) or text).split("\n")), [])
    a, b = wrap(left[1]), wrap(right[1])
    lines = [f"{left[0]:<{width}} │ {right[0]}", f"{'─' * width}─┼─{'─' * width}"]
    lines += [f"{x:<{width}} │ {y}" for x, y in zip(a + [""] * (len(b) - len(a)), b + [""] * (len(a) - len(b)),
                                                     strict=True)]
    return "\n".join(lines)


def _check_given_sae(path: str, run: Any, ckpt: Path, book: Any, named: str | None = None) -> None:
    """CocomixError when `--sae` (or the run's concept.sae, `named` so) is another SAE than the one the student's
    concept indices refer to (a file remade at the same path after training, say): its content
    hash against the checkpoint's record of the SAE it trained with and the concept labels' source; without
    either (a run trained before checkpoints recorded it, no --concepts), against the run's concept.sae where it
    still exists and its target cache's meta (those are read from here, and `--sae` is often given because they
    no longer name the run's SAE). Nothing found: nothing to compare."""

    from cocomix.concepts.identity import sae_sha256, same_sae
    from cocomix.train.checkpoint import read_state

    c = run.concept
    given = sae_sha256(path, c.teacher_layer)
    known = [(f"{ckpt}'s record", (read_state(ckpt).get("inputs") or {}).get("concept.sae")),
             ("--concepts' source", book.source.get("sae_sha256"))]  # made when the run (its labels) used it
    if not any(isinstance(sha, str) for _, sha in known):
        if c.sae and Path(c.sae).exists():
            known.append((f"the run's concept.sae {c.sae}", sae_sha256(c.sae, c.teacher_layer)))
        elif c.cache and (Path(c.cache) / "meta.json").is_file():
            try:
                meta = json_text.loads((Path(c.cache) / "meta.json").read_text(encoding="utf-8"))
                known.append((f"the run's concept.cache {c.cache}", meta.get("sae_sha256")))
            except (OSError, ValueError, AttributeError):
                pass  # (an unreadable cache records nothing to compare with)
    for where, sha in known:
        if given is not None and isinstance(sha, str) and sha != given and not same_sae(sha, path, c.teacher_layer):
            raise CocomixError(f"{named or f'--sae {path}'}: not the SAE the student's concepts refer to (its files "
                               f"differ from {where}); give the SAE the run was trained with"
                               + (" as --sae" if named else ""))


def _teacher_and_sae(args: argparse.Namespace, run: Any, device: Any, ckpt: Path, book: Any,
                     ) -> tuple[Teacher, TopKSAE]:
    """The teacher and SAE of `--teacher` / `--sae`, else of the run's concept.teacher / concept.sae (paths
    relative to where training ran: a failure says so)."""
    from cocomix.sae import load_sae
    from cocomix.teacher import Teacher
    from cocomix.teacher_precision import teacher_dtype

    c = run.concept

    def hint(e: CocomixError, key: str, flag: str, value: str) -> CocomixError:
        return CocomixError(f"{e} (the run's concept.{key} {value!r}, read from {Path.cwd()}; pass {flag} to use "
                            "one elsewhere)")

    try:
        teacher = Teacher.from_pretrained(args.teacher or c.teacher, c.teacher_layer, device=device,
                                          dtype=teacher_dtype(c.teacher_dtype))
    except CocomixError as e:
        raise (e if args.teacher else hint(e, "teacher", "--teacher", c.teacher)) from None
    try:
        sae = load_sae(args.sae or c.sae, k=c.sae_k, teacher_layer=c.teacher_layer)
    except CocomixError as e:
        raise (e if args.sae else hint(e, "sae", "--sae", c.sae)) from None
    if sae.n_latents == c.n_latents and sae.d_in == teacher.width:  # (other shapes: said later)
        _check_given_sae(args.sae or c.sae, run, ckpt, book, None if args.sae else f"the run's concept.sae {c.sae!r}")
    return teacher, teacher.fit_sae(sae.to(device))


def cmd_steer(args: argparse.Namespace) -> int:
    import torch

    from cocomix.interpret.inspect import mixing_seam
    from cocomix.interpret.steer import check_steering, steer_student, steer_teacher, teacher_activity
    from cocomix.interpret.steer_eval import check_fit_on_store, check_teacher_and_sae
    from cocomix.model.generate import check_sampling

    unused = [flag for flag, value in (("--teacher", args.teacher), ("--sae", args.sae)) if value is not None]
    if unused and not args.teacher_check:  # read only by --teacher-check: refused rather than ignored
        named = " and ".join(unused)
        raise CocomixError(f"{named}: used only by --teacher-check; add --teacher-check or drop {named}")
    concepts = args.concept or []
    alphas = args.alpha * len(concepts) if len(args.alpha) == 1 else args.alpha
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, None)
    run, model, store, book, ckpt = _open(args)
    check_steering(mixing_seam(model, "steering").n_latents, concepts, alphas)  # (before any teacher is loaded)
    tok = store.tokenizer()
    ids = tok.encode(args.prompt)
    if not ids:
        raise CocomixError("--prompt: encodes to no tokens; give some text")
    device = next(model.parameters()).device
    prompt = torch.tensor([ids], device=device)
    if args.teacher_check:  # loaded before anything is printed: a teacher that cannot be read is said first
        teacher, sae = _teacher_and_sae(args, run, device, ckpt, book)
        check_teacher_and_sae(model.seam.n_latents, teacher, sae)
        teacher.check_store(store, len(ids) + args.max_new_tokens, "the prompt's tokens + --max-new-tokens")
        split = "val" if store.num_chunks("val", run.data.seq_len) else "train"
        check_fit_on_store(teacher, sae, store, split, run.data.seq_len, len(ids) + args.max_new_tokens)
    outs = {}
    for name, a in (("unsteered", [1.0] * len(concepts)), ("steered", alphas)):
        gen = torch.Generator(device=device).manual_seed(torch_seed(args.seed))
        outs[name] = steer_student(model, prompt, concepts, a, args.max_new_tokens, args.temperature, args.top_k,
                                   generator=gen, vocab_limit=tok.vocab_size)
    what = ", ".join(f"#{c} × {a:g}" + (f" ({book[c].short().strip('()')})" if book[c].described else "")
                     for c, a in zip(concepts, alphas, strict=True))
    unlabelled = "" if any(book[c].described for c in concepts) else " (labels: pass --concepts DIR)"
    print(f"prompt: {args.prompt!r}\nsteering: {what}{unlabelled}")
    for i, c in enumerate(concepts):
        u, s = (float(outs[k].mixed[i]) for k in ("unsteered", "steered"))
        ever = any(bool(outs[k].ever_mixed[i]) for k in ("unsteered", "steered"))
        note = ("  (never mixed: its scaled logit stays below the TopK, so steering it has no effect)" if not ever
                else "  (mixed in the prompt only: steering reaches the continuation through attention)"
                if u == s == 0 else
                "  (steering keeps it out of the TopK: removed from the mixed concepts)" if s == 0 else "")
        print(f"#{c} mixed at {u:.0%} of the generating positions unsteered, {s:.0%} steered{note}")
    text = {k: tok.decode(v.tokens[0, len(ids):].tolist()) for k, v in outs.items()}
    print(_side_by_side(("student, unsteered (α = 1)", text["unsteered"]), ("student, steered", text["steered"])))
    if args.teacher_check:
        t_out, active = {}, {}
        for name, a in (("unsteered", [1.0] * len(concepts)), ("steered", alphas)):
            gen = torch.Generator(device=device).manual_seed(torch_seed(args.seed))
            tokens = steer_teacher(teacher, sae, prompt, concepts, a, args.max_new_tokens, args.temperature,
                                   args.top_k, gen, vocab_limit=tok.vocab_size)
            t_out[name] = tok.decode(tokens[0, len(ids):].tolist())
            active[name] = (teacher_activity(teacher, sae, tokens, len(ids), concepts).tolist(),  # generating
                            teacher_activity(teacher, sae, tokens, 1, concepts).tolist())  # prompt included
        print()
        for i, c in enumerate(concepts):
            (u, u_all), (s, s_all) = ((active[k][0][i], active[k][1][i]) for k in ("unsteered", "steered"))
            note = ("  (never active: steering it in the teacher changed nothing)" if u_all == s_all == 0
                    else "  (active in the prompt only: steering reaches the continuation through attention)"
                    if u == s == 0 else "")
            print(f"teacher: #{c} active at {u:.0%} of the generating positions unsteered, {s:.0%} steered (the "
                  f"teacher's steering edits a latent only where it is active){note}")
        print(_side_by_side(("teacher, unsteered", t_out["unsteered"]), ("teacher, SAE latent steered",
                                                                         t_out["steered"])))
    return 0


def cmd_steer_eval(args: argparse.Namespace) -> int:
    from cocomix.interpret.inspect import mixing_seam
    from cocomix.interpret.steer import check_alpha, check_steering
    from cocomix.interpret.steer_eval import SteerEvalConfig, steering_eval, write_steering_report

    check_out_folder(args.out, own=("a steering metric (steer-eval)",))  # (its note once the inputs are checked)
    try:
        alphas = tuple(float(a) for a in args.alphas.split(","))
    except ValueError:
        raise CocomixError(f"--alphas: expected comma-separated numbers, got {args.alphas!r}") from None
    for a in alphas:
        check_alpha(a, "--alphas")
    if len(set(alphas)) != len(alphas):
        raise CocomixError(f"--alphas: {args.alphas!r} repeats a value; give each α once")
    alphas = sorted(alphas)  # the report's rows and the plot's lines in α order, however they were typed
    run, model, store, book, ckpt = _open(args)
    if args.concept and args.n_concepts is not None:  # (it would be ignored: the concepts are given)
        raise CocomixError("--n-concepts: chooses concepts when no --concept is given; give one or the other")
    cfg = SteerEvalConfig(alphas=alphas, n_prompts=args.prompts, prompt_len=args.prompt_len,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          n_concepts=5 if args.n_concepts is None else args.n_concepts, seed=args.seed,
                          teacher_check=args.teacher_check)
    cfg.check(model.cfg.context_length)  # before the teacher and SAE are loaded and checked
    seam = mixing_seam(model, "steering")
    if args.concept:
        check_steering(seam.n_latents, args.concept, [1.0] * len(args.concept))
    elif not args.concepts:
        raise CocomixError("--concepts: needed to choose well-described concepts automatically (or pass --concept)")
    teacher, sae = _teacher_and_sae(args, run, next(model.parameters()).device, ckpt, book)
    check_out_folder(args.out, own=("a steering metric (steer-eval)",), replaces=True)  # before the evaluation
    result = steering_eval(model, teacher, sae, store, book, cfg, run.data.seq_len, concepts=args.concept)
    out = write_steering_report(result, args.out)
    print((out / "steering.md").read_text(encoding="utf-8"))
    print(json.dumps(result["summary"]))
    return 0


def cmd_compression(args: argparse.Namespace) -> int:
    from cocomix.interpret.compression import compression_report
    from cocomix.interpret.inspect import concept_seam
    from cocomix.runs import load_run

    check_out_folder(args.out, own=("a compression analysis",))
    if not 0 < args.threshold < float("inf"):
        raise CocomixError(f"--threshold: expected a finite number > 0, got {args.threshold}")
    _, _, model, _ = load_run(args.run)
    concept_seam(model)
    check_out_folder(args.out, own=("a compression analysis",), replaces=True)  # (the note, inputs checked)
    summary = compression_report(model, args.out, args.threshold)
    print(json.dumps({**summary, "plot": str(Path(args.out) / "compression.png")}))
    return 0


def _common(s: argparse.ArgumentParser) -> None:
    add_run(s, "CoCoMix run directory or checkpoint")
    s.add_argument("--data", default=None, help="token store with the run's tokenizer (default: the run's)")
    s.add_argument("--concepts", default=None, help="describe-concepts output folder (labels for concepts)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_interpret_commands(sub: argparse._SubParsersAction) -> None:
    """Register inspect, steer, steer-eval and compression on the `cocomix` subparsers."""
    s = sub.add_parser("inspect", help="the concepts a CoCoMix student predicts at every token (table, HTML)")
    _common(s)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=utf8_text, help="text to inspect")
    src.add_argument("--val-window", type=int, help="inspect this validation window of the token store")
    s.add_argument("--max-tokens", type=int, default=None,
                   help="tokens shown (of --text or the validation window; default 64, or the model's context "
                        "length if shorter)")
    s.add_argument("--top", type=int, default=3, help="concepts shown per token")
    s.add_argument("--html", default=None, help="also write a self-contained HTML page here")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("steer", help="generate with chosen concept logits × α, side by side with unsteered")
    _common(s)
    s.add_argument("--prompt", required=True, type=utf8_text, help="text to continue")
    s.add_argument("--concept", type=int, action="append", required=True, help="concept index (repeatable)")
    s.add_argument("--alpha", type=float, action="append", required=True,
                   help="multiplier per --concept, or one for all (paper: −10 … 10; 1 is unsteered)")
    s.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    s.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (the same for every α)")
    s.add_argument("--teacher-check", action="store_true",
                   help="also steer the same SAE latent in the teacher (the run's concept.teacher and concept.sae, "
                        "or --teacher / --sae)")
    s.add_argument("--teacher", default=None, help="teacher for --teacher-check (default: the run's concept.teacher)")
    s.add_argument("--sae", default=None, help="SAE for --teacher-check (default: the run's concept.sae)")
    s.set_defaults(func=cmd_steer)

    s = sub.add_parser("steer-eval", help="steering metric: concept activation rate and fluency against α")
    _common(s)
    s.add_argument("--concept", type=int, action="append", default=None,
                   help="concepts to steer (default: chosen from --concepts automatically)")
    s.add_argument("--n-concepts", type=int, default=None,
                   help="concepts chosen automatically when no --concept is given (default 5)")
    s.add_argument("--alphas", default="-10,-5,0,1,5,10",
                   help="comma-separated α values; must include 0 and 1 (write --alphas=-10,0,1,10)")
    s.add_argument("--prompts", type=int, default=24, help="validation windows used as prompts")
    s.add_argument("--prompt-len", type=int, default=16, help="tokens of each prompt (cut from a validation window)")
    s.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 is greedy)")
    s.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens")
    s.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (the same for every α)")
    s.add_argument("--teacher-check", action="store_true",
                   help="also steer each concept's SAE latent in the teacher and report its rate (the reference)")
    s.add_argument("--teacher", default=None, help="teacher (default: the run's concept.teacher)")
    s.add_argument("--sae", default=None, help="SAE (default: the run's concept.sae)")
    s.add_argument("--out", required=True, help="folder for steering.md / .json / .png")
    s.set_defaults(func=cmd_steer_eval)

    s = sub.add_parser("compression", help="compression-layer row norms: histogram and fraction below 1e-2")
    add_run(s, "CoCoMix run directory or checkpoint")
    s.add_argument("--threshold", type=float, default=1e-2, help="row norm counted as pruned (paper: 1e-2)")
    s.add_argument("--out", required=True, help="folder for compression.png / .json")
    s.set_defaults(func=cmd_compression)
