"""The concept-side subcommands of `cocomix` (see `cli.py`): train-sae, extract-concepts, describe-concepts.

Each is a thin wrapper of one library function (`sae.training.train_sae`, `concepts.cache.extract_concepts`,
`concepts.describe`); `add_concept_commands` registers them on the main parser.

No paper equation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cocomix.cli_parser import DEVICE_HELP, warn_on_rank0_only

if TYPE_CHECKING:
    from cocomix.sae.topk import TopKSAE
    from cocomix.teacher import Teacher


def _teacher_and_sae(args: argparse.Namespace, device: Any = None) -> tuple[Teacher, TopKSAE]:
    """The frozen teacher and SAE named by the shared concept arguments (see `_add_concept_args`), on `device`
    (default: `--device`)."""
    from cocomix.sae import load_sae
    from cocomix.teacher import Teacher
    from cocomix.teacher_precision import teacher_dtype
    from cocomix.train.device import resolve_device

    device = device if device is not None else resolve_device(args.device, "--device")
    teacher = Teacher.from_pretrained(args.teacher, args.teacher_layer, device=device,
                                      dtype=teacher_dtype(args.teacher_dtype), layer_field="--teacher-layer")
    sae = load_sae(args.sae, k=args.sae_k, teacher_layer=args.teacher_layer, layer_field="--teacher-layer")
    sae = sae.to(teacher.device)
    return teacher, teacher.fit_sae(sae)


def cmd_train_sae(args: argparse.Namespace) -> int:
    import dataclasses

    from cocomix.sae.train_config import SAETrainConfig
    from cocomix.sae.training import check_out, check_world_size, train_sae
    from cocomix.teacher import Teacher
    from cocomix.teacher_precision import teacher_dtype
    from cocomix.train import distributed as dd
    from cocomix.train.device import resolve_device
    from cocomix.train.fail_fast import FailFast

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SAETrainConfig)}
    cfg = SAETrainConfig(**values)
    ctx = dd.context_from_env()  # under torchrun the ranks share the teacher work and each step's rows
    check_world_size(cfg, ctx.world_size)  # before the (possibly long) teacher load
    warn_on_rank0_only()
    device = dd.setup(ctx, resolve_device(cfg.device, "--device"))
    try:
        with FailFast(ctx):  # any rank's error stops the others at once
            # "other settings" before the (possibly long) teacher load, by rank 0 (checked again, locked, later)
            dd.main_rank_does(lambda: Path(args.out).is_dir() and check_out(cfg, Path(args.out)), ctx, device)
            teacher = Teacher.from_pretrained(cfg.teacher, cfg.teacher_layer, device=device,
                                              dtype=teacher_dtype(cfg.teacher_dtype), layer_field="--teacher-layer")
            report = train_sae(cfg, args.out, teacher, ctx=ctx)
    finally:
        dd.teardown(ctx)
    if ctx.is_main:
        print(json.dumps({**report.to_dict(), "sae": str(Path(args.out) / "sae")}))
    return 0


def _add_sae_train_args(s: argparse.ArgumentParser) -> None:
    """One flag per SAETrainConfig field (--teacher-layer for teacher_layer, ...), help from its docstring."""
    import dataclasses

    from cocomix.sae.train_config import SAETrainConfig, field_docs

    docs = field_docs()
    for f in dataclasses.fields(SAETrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            s.add_argument(flag, dest=f.name, required=True, type=int if f.type == "int" else str, help=docs[f.name])
        elif isinstance(f.default, bool):
            s.add_argument(flag, dest=f.name, default=f.default, action=argparse.BooleanOptionalAction,
                           help=docs[f.name])
        else:
            s.add_argument(flag, dest=f.name, default=f.default, type=type(f.default),
                           choices=("float32", "bfloat16") if f.name == "teacher_dtype" else None,
                           help=f"{docs[f.name]} (default {f.default:g})" if isinstance(f.default, float)
                           else f"{docs[f.name]} (default {f.default})")


def cmd_extract_concepts(args: argparse.Namespace) -> int:
    from cocomix.atomic import check_out_folder
    from cocomix.concepts.attribution import check_option_names
    from cocomix.concepts.cache import check_extract_args, extract_concepts
    from cocomix.train import distributed as dd
    from cocomix.train.device import resolve_device
    from cocomix.train.fail_fast import FailFast

    check_out_folder(args.out)  # before the teacher and SAE load, as every option that does not need them
    splits = tuple(s.strip() for s in args.splits.split(","))
    check_extract_args(splits, args.batch_size)
    check_option_names(args.k_attr, args.selection, args.multiplier, args.attribution_loss, args.gradient_at)
    warn_on_rank0_only()
    # under torchrun: every rank runs the teacher on its own device (cuda:LOCAL_RANK, or the CPU with gloo) over its
    # share of each round of windows; rank 0 writes the cache and prints
    ctx = dd.context_from_env()
    device = dd.setup(ctx, resolve_device(args.device, "--device"))
    try:
        with FailFast(ctx):  # any rank's error stops the others at once
            teacher, sae = _teacher_and_sae(args, device)
            meta = extract_concepts(args.data, args.out, teacher, sae, teacher_spec=args.teacher, sae_spec=args.sae,
                                    k_attr=args.k_attr, selection=args.selection, multiplier=args.multiplier,
                                    attribution_loss=args.attribution_loss, gradient_at=args.gradient_at,
                                    seq_len=args.seq_len, batch_size=args.batch_size,
                                    splits=splits, ctx=ctx)
    finally:
        dd.teardown(ctx)
    if not ctx.is_main:
        return 0
    # the windows of each split whose targets are all written (a split not asked for, or unfinished, is absent)
    done = {s: n for s, n in meta["windows"].items() if s in meta["complete_splits"]}
    print(json.dumps({"complete": meta["complete"], "windows": done,
                      **{k: meta[k] for k in ("n_latents", "k_attr", "dtype")}}))
    if not meta["complete"]:  # "complete" is about the split training reads
        print(f"cocomix: note: {args.out}: the train split has no targets yet (splits done: "
              f"{', '.join(meta['complete_splits']) or 'none'}); training from this cache needs `--splits train`",
              file=sys.stderr)
    return 0


def cmd_describe_concepts(args: argparse.Namespace) -> int:
    from cocomix.concepts.describe import describe_concepts, write_report
    from cocomix.concepts.identity import sae_sha256, teacher_fingerprint
    from cocomix.data import TokenStore
    from cocomix.errors import ConfigError

    if args.context < 0:
        raise ConfigError(f"--context: expected an integer >= 0, got {args.context}")
    from cocomix.concepts.describe import check_describe_args

    check_describe_args(args.batch_size, args.top_n, args.max_windows)  # before the --out note
    from cocomix.atomic import check_out_folder
    from cocomix.train import distributed as dd
    from cocomix.train.device import resolve_device
    from cocomix.train.fail_fast import FailFast

    warn_on_rank0_only()
    ctx = dd.context_from_env()  # under torchrun the ranks share the windows; rank 0 writes the report
    store = TokenStore.open(args.data)
    device = dd.setup(ctx, resolve_device(args.device, "--device"))
    try:
        with FailFast(ctx):  # any rank's error stops the others at once
            own = ("concept descriptions (describe-concepts)",)
            dd.main_rank_does(lambda: check_out_folder(args.out, own=own), ctx, device)  # refused before loading
            teacher, sae = _teacher_and_sae(args, device)
            # the "will replace it" note once the teacher and SAE have loaded, before the pass
            dd.main_rank_does(lambda: check_out_folder(args.out, own=own, replaces=True), ctx, device)
            stats = describe_concepts(store, teacher, sae, args.seq_len, split=args.split, max_windows=args.max_windows,
                                      batch_size=args.batch_size, top_n=args.top_n, ctx=ctx)
    finally:
        dd.teardown(ctx)
    if not ctx.is_main:
        return 0
    out = write_report(stats, store, args.out, args.split, args.seq_len, context=args.context,
                       meta={"teacher": args.teacher, "teacher_layer": args.teacher_layer, "sae": args.sae,
                             # contents, so inspect / steer can tell another SAE or teacher from a moved one
                             "sae_sha256": sae_sha256(args.sae, args.teacher_layer),
                             "teacher_fingerprint": teacher_fingerprint(args.teacher)})
    fired = int((stats["counts"] > 0).sum())
    print(json.dumps({"report": str(out / "concepts.md"), "latents": int(stats["counts"].numel()),
                      "fired": fired, "positions": int(stats["positions"]), "fvu": float(stats["fvu"])}))
    return 0


def _add_concept_args(s: argparse.ArgumentParser) -> None:
    """Arguments naming the token store, the frozen teacher and the SAE (extract-concepts, describe-concepts)."""
    s.add_argument("--data", required=True, help="token store (from `cocomix prepare`)")
    s.add_argument("--teacher", required=True, help="HF causal LM name or folder, or a cocomix run directory")
    s.add_argument("--teacher-layer", type=int, required=True, help="block whose output the SAE reads")
    s.add_argument("--sae", required=True, help="OpenAI .pt/.safetensors file, SAELens or sparsify folder")
    s.add_argument("--sae-k", type=int, default=None, help="SAE TopK (needed for OpenAI .safetensors files)")
    s.add_argument("--teacher-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the teacher's weights (a training run's concept.teacher_dtype; default float32)")


def add_concept_commands(sub: argparse._SubParsersAction) -> None:
    """Register train-sae, extract-concepts and describe-concepts on the `cocomix` subparsers."""
    s = sub.add_parser("train-sae", help="train a TopK SAE on a teacher's residual stream (saved for SAELens)")
    _add_sae_train_args(s)
    s.add_argument("--out", required=True, help="output directory (resumed when it holds a run of the same settings)")
    s.set_defaults(func=cmd_train_sae)

    s = sub.add_parser("extract-concepts", help="run teacher + SAE once over a token store, cache the targets")
    _add_concept_args(s)
    s.add_argument("--k-attr", type=int, default=4, help="targets per position (paper: 4)")
    s.add_argument("--selection", default="attribution", choices=("attribution", "activation"),
                   help="concept labels: the top attribution scores (paper) or the top activations (ablation)")
    s.add_argument("--multiplier", default="activation", choices=("activation", "pre_activation"),
                   help="attribution multiplier: post-TopK activation (official) or pre-activation (paper Eq. 1)")
    s.add_argument("--attribution-loss", default="window_mean", choices=("window_mean", "next_token"),
                   help="gradient of the window's mean NLL (official) or of each position's own next-token NLL "
                        "(paper Eq. 1; one teacher backward pass through own-position attention)")
    s.add_argument("--gradient-at", default="residual", choices=("residual", "reconstruction"),
                   help="take the gradient at the teacher's true residual (official) or, with --attribution-loss "
                        "next_token, at the SAE reconstruction D(c_t) the teacher is run from (paper Eq. 1 as "
                        "written; a second teacher forward)")
    s.add_argument("--seq-len", type=int, required=True, help="window length; must equal the training run's")
    s.add_argument("--batch-size", type=int, default=8, help="windows per teacher pass")
    s.add_argument("--splits", default="train,val", help="comma-separated splits to extract (train, val)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, help="cache directory (resumed if it holds a partial extraction)")
    s.set_defaults(func=cmd_extract_concepts)

    s = sub.add_parser("describe-concepts", help="frequency and top activating contexts of every SAE latent")
    _add_concept_args(s)
    s.add_argument("--seq-len", type=int, required=True, help="window length the teacher reads")
    s.add_argument("--split", default="val", choices=("train", "val"), help="split whose windows are read")
    s.add_argument("--max-windows", type=int, default=0, help="stop after this many windows (0: the whole split)")
    s.add_argument("--top-n", type=int, default=8, help="contexts kept per latent")
    s.add_argument("--context", type=int, default=12, help="tokens shown on each side of the activating token")
    s.add_argument("--batch-size", type=int, default=8, help="windows per teacher pass")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, help="folder for concepts.json and concepts.md")
    s.set_defaults(func=cmd_describe_concepts)

