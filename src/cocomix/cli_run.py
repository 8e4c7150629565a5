"""The run-side subcommands of `cocomix` (see `cli.py`): prepare, train (`add_run_commands`, listed first) and
flops, presets (`add_setup_commands`).

Each is a thin wrapper of one library function (`data.prepare`, `train.train`, `flops.run_flops`, `presets`).

No paper equation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cocomix.cli_parser import utf8_text
from cocomix.errors import CocomixError, CocomixWarning

if TYPE_CHECKING:
    from cocomix.config import RunConfig


def run_config_from(args: argparse.Namespace) -> RunConfig:
    """The run config of `train` / `flops`: --config FILE, --preset NAME, both (the file's fields on top of the
    preset's) or (train --resume) the run's stored config, with the --set overrides applied."""
    from cocomix.config import RunConfig
    from cocomix.config_io import apply_overrides, load_config_file, merge_config, run_config
    from cocomix.presets import get_preset
    from cocomix.train.checkpoint import read_run_config

    given = load_config_file(args.config) if args.config else {}
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    foreign = sorted(set(given) - set(sections))
    if foreign and len(foreign) == len(given):  # (a misspelt section beside known ones: the field error names it)
        raise CocomixError(f"--config {args.config}: not a cocomix run config (its fields {', '.join(foreign[:4])}"
                           f"{', …' if len(foreign) > 4 else ''} are none of a run's: {', '.join(sections)})")
    if args.config and args.preset:  # the file's fields on top of the preset's
        base = merge_config(get_preset(args.preset).to_dict(), given)
    elif args.config:
        base = given
        left_out = [name for name in ("method", "model", "data", "train") if name not in base]
        if left_out and not foreign:  # (another tool's file beside run fields: refused below)
            shapes = "; ".join(what for name, what in (("method", "method: ntp, the baseline"),
                                                       ("model", "model: GPT-2 124M's shapes")) if name in left_out)
            shapes = f" ({shapes})" if shapes else ""
            warnings.warn(f"--config {args.config} leaves out {', '.join(left_out)}: those fields take RunConfig's "
                          f"defaults{shapes}, see --print-config; --preset NAME --config FILE starts from a preset "
                          "instead", CocomixWarning, stacklevel=2)
    elif args.preset:
        base = get_preset(args.preset).to_dict()
    elif getattr(args, "resume", False) and args.out:
        from cocomix.outputs import RUN, output_kind

        out = Path(args.out)
        kind = output_kind(out) if out.is_dir() else None
        if kind not in (None, RUN):  # another command's output (an exported model's config.json is no run's)
            raise CocomixError(f"--out {out}: holds {kind}, not a run, so there is nothing to --resume; choose "
                               "another --out")
        if (out / "config.json").is_file():
            base = read_run_config(out).to_dict()
        else:
            what = ("has no run (no config.json)" if out.is_dir() else "is a file, not a run folder"
                    if out.exists() else "does not exist")
            raise CocomixError(f"--out {out}: {what}, so --resume has no config to continue; give --preset NAME "
                               "or --config FILE to start a run there")
    elif args.command == "train":
        raise CocomixError("train: give --preset NAME or --config FILE (or --resume an existing --out)")
    else:
        raise CocomixError(f"{args.command}: give --preset NAME or --config FILE")
    run = run_config(apply_overrides(base, args.set or []))
    resumed_here = getattr(args, "resume", False) and args.out and Path(args.out).resolve() == Path(
        args.config or "").resolve()
    if args.command == "train" and args.config and Path(args.config).is_dir() and not resumed_here:
        from cocomix.train.resume import ADJUSTED

        adjusted = (Path(args.config) / ADJUSTED).is_file()
    else:
        adjusted = False
    if adjusted:
        warnings.warn(f"--config {args.config}: that run was resumed with adjusted settings (e.g. a lower train.lr "
                      "after a divergence, listed by step in its adjusted.jsonl); its config.json, read here, holds "
                      "those in force at its end, not what it started with", CocomixWarning, stacklevel=2)
    # concept settings given on the command line that the method does not read (`Method.concept_settings`; a
    # stored config may carry its CoCoMix twin's, as the demo's NTP run does: those are not flagged), e.g. a
    # concept.cache on `tiny` instead of `tiny-cocomix`
    from cocomix.methods import unread_concept_settings

    given = unread_concept_settings(run.method, dict.fromkeys(kv.partition("=")[0].strip() for kv in args.set or []))
    if given:
        warnings.warn(f"--set {', '.join(given)}: method {run.method} does not read "
                      f"{'this setting' if len(given) == 1 else 'these settings'}, so it changes nothing; set "
                      "method=cocomix (or use a *-cocomix preset) to train with concepts", CocomixWarning, stacklevel=2)
    return run


def cmd_prepare(args: argparse.Namespace) -> int:
    from cocomix.data import prepare

    if args.adopt is not None:
        return _adopt(args)
    out = args.out or ("data/shakespeare" if args.source == "shakespeare" else None)
    if out is None:  # data/shakespeare is where the tiny presets read: another corpus there would be trained on
        raise CocomixError(f"--out: give the folder for the token store of {args.source!r} (the default "
                           "data/shakespeare is for the embedded corpus only)")
    if args.source == "shakespeare" and (args.val_fraction is not None or args.split_by != "name"):
        flag = "--val-fraction" if args.val_fraction is not None else "--split-by"
        raise CocomixError(f"{flag}: the embedded shakespeare corpus holds out fixed plays; the option is for "
                           "other sources")
    meta = prepare(args.source, out, tokenizer=args.tokenizer or "bpe:4096", overwrite=args.overwrite,
                   streaming=args.streaming,
                   val_fraction=args.val_fraction, split_by=args.split_by)
    if meta["val_tokens"] == 0:  # said once the store is written: an error before it stays the one line
        print("cocomix: note: no validation text was held out (--val-fraction 0): `cocomix train` and `train-sae` "
              "evaluate on the val split and will refuse this store; `extract-concepts --splits train` reads it",
              file=sys.stderr)
    print(json.dumps({k: meta[k] for k in ("vocab_size", "train_tokens", "val_tokens", "dtype")}))
    return 0


def _adopt(args: argparse.Namespace) -> int:
    """`prepare --adopt DIR`: nanoGPT-style train.bin / val.bin made a token store in place (`adopt_store.py`)."""
    from cocomix.data.adopt_store import adopt

    given = [flag for flag, value in (("--source", args.source != "shakespeare"), ("--out", args.out),
                                      ("--val-fraction", args.val_fraction is not None),
                                      ("--split-by", args.split_by != "name"), ("--streaming", args.streaming),
                                      ("--overwrite", args.overwrite)) if value]
    if given:
        raise CocomixError(f"{given[0]}: --adopt makes the folder's own train.bin / val.bin a store in place; it "
                           "reads no source and takes only --tokenizer")
    meta = adopt(args.adopt, tokenizer=args.tokenizer or "gpt2")
    print(json.dumps({k: meta[k] for k in ("vocab_size", "train_tokens", "val_tokens", "dtype")}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cocomix.cli_parser import warn_on_rank0_only
    from cocomix.train import train

    host = warn_on_rank0_only()  # under torchrun only rank 0 warns (the config's warnings too) and reports
    run = run_config_from(args)
    if args.print_config:
        print(run.to_json())
        return 0
    if not args.out:
        raise CocomixError("--out: expected the run directory (cocomix train ... --out DIR)")
    from cocomix.presets import check_demo_outputs

    check_demo_outputs(run)
    res = train(run, args.out, resume=args.resume)
    if not host:
        return 0
    if res.stopped:  # SIGTERM / SIGINT: a checkpoint was written; the conventional 128 + signal number
        print(f"cocomix: stopped by {res.stopped}; resume with the same command and --resume", file=sys.stderr)
        return res.exit_code
    val = f"{res.val_loss:.4f}" if res.val_loss is not None else "n/a"
    print(json.dumps({"run_dir": str(res.run_dir), "steps": res.steps, "train_loss": res.train_loss,
                      "val_loss": res.val_loss}))
    print(f"done: {res.run_dir} | train_loss {res.train_loss:.4f} | val_loss {val}", file=sys.stderr)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from cocomix.flops import active_params, config_parts, ntp_width_for, plugin_note, run_flops, teacher_shape
    from cocomix.lm_shape import gpt2_small
    from cocomix.methods import DISTILLING

    run = run_config_from(args)
    shape, sae_k, k_from = config_parts(run)  # what training would count, read from the cache or the SAE file
    # say whose shape the teacher term counts (read once, here), and which k the SAE term
    said = ""
    if shape is not None:
        said = f"recorded by the target cache {run.concept.cache}"
    elif (run.method == "cocomix" or run.method in DISTILLING) and run.concept.teacher:
        shape = teacher_shape(run.concept.teacher)
        said = (run.concept.teacher if shape is not None else
                f"GPT-2 small assumed ({run.concept.teacher!r} is neither a cocomix run nor a causal LM transformers "
                "can build from a local folder or the HF cache; training counts the loaded teacher's real shape)")
        shape = shape or gpt2_small()
    elif run.method == "cocomix" or run.method in DISTILLING:
        shape = gpt2_small()
        said = ("GPT-2 small assumed (no concept.teacher" + (f", and the target cache {run.concept.cache} records "
                "no shape" if run.concept.cache else "") + ")")
    flops = run_flops(run, shape, sae_k)
    if not (flops["teacher"] or flops.get("cached_targets")):  # no teacher work counted: no shape to say
        said = ""
    out: dict = {"method": run.method, "active_params": active_params(run), "flops_per_token": flops}
    if said:
        out["teacher_shape"] = said
        out["teacher"] = shape.summary()
    if k_from:
        out["sae_k"] = {"k": sae_k, "from": k_from}
    if run.method == "cocomix":
        out["ntp_width_matching_active_params"] = ntp_width_for(run)
    if plugin_note(run):
        out["note"] = plugin_note(run)
    print(json.dumps(out, indent=2))
    f = {k: v / 1e6 for k, v in out["flops_per_token"].items()}  # the same in words, on stderr (stdout stays JSON)
    line = (f"flops: {f['total']:.1f} MFLOP/token per training step (student {f['student']:.1f}, teacher "
            f"{f['teacher']:.1f}, SAE {f['sae']:.1f})")
    if f.get("cached_targets"):
        line += (f"; the cached targets cost {f['cached_targets']:.1f} more once, when extracted (`compare` counts "
                 f"them: {f['total'] + f['cached_targets']:.1f} in all)")
    if said.startswith("GPT-2 small assumed"):  # assumptions the figures rest on: in the summary, not only the JSON
        line += "; teacher: GPT-2 small assumed (see teacher_shape)"
    if k_from and k_from.startswith(f"{sae_k} assumed"):
        line += f"; SAE k {sae_k} assumed (see sae_k)"
    print(line, file=sys.stderr)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from cocomix.presets import PRESETS, get_preset

    if args.name is not None:
        print(get_preset(args.name).to_json())
    else:
        width = max(map(len, PRESETS)) + 1
        for name, fn in PRESETS.items():  # the docstring's first sentence, which may span lines
            first = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
            end = first.find(". ")
            print(f"{name:{width}s} {first if end < 0 else first[:end + 1]}")
    return 0


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    """Register prepare and train."""
    s = sub.add_parser("prepare", help="tokenize a corpus into train/val token files")
    s.add_argument("--source", default="shakespeare", type=utf8_text,
                   help="shakespeare | text:PATH[#SEPARATOR] | jsonl:PATH[#field] | hf:NAME[:CONFIG][@SPLIT][#field] "
                        "(text:stories.txt#'<|endoftext|>' cuts the file into documents there; NAME is a hub "
                        "name or owner/name, or a local folder or data file)")
    s.add_argument("--out", help="output directory (default for the embedded shakespeare corpus: data/shakespeare, "
                                 "where the tiny presets read; required for any other source)")
    s.add_argument("--tokenizer", default=None,
                   help="bpe:VOCAB (train a byte-level BPE; the default, bpe:4096) | tokenizer.json | HF tokenizer "
                        "name or folder (with --adopt: the one that wrote the streams, default gpt2)")
    s.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of documents held out (default 0.05; shakespeare holds out fixed plays)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing prepared store")
    s.add_argument("--split-by", choices=("name", "content"), default="name",
                   help="what the train/val split hashes: each document's name, or its text (copies on one side)")
    s.add_argument("--streaming", action="store_true",
                   help="hf: sources: stream the dataset (no download into the cache and Arrow conversion first)")
    s.add_argument("--adopt", metavar="DIR",
                   help="instead of tokenizing a source: make DIR's nanoGPT-style train.bin / val.bin (e.g. the "
                        "official code's OpenWebText) a token store in place, checked against --tokenizer")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train a model with any method (ntp, cocomix, kd, pause, kd-pause)")
    s.add_argument("--preset", help="a preset name (see `cocomix presets`)")
    s.add_argument("--config", help="a run config file (.json or .toml), or a run directory (its config.json); "
                   "with --preset, its fields replace the preset's")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=3e-4")
    s.add_argument("--out", default=None, help="run directory (needed unless --print-config)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (its stored config when neither "
                        "--preset nor --config is given); an empty or missing --out starts the run")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.set_defaults(func=cmd_train)


def add_setup_commands(sub: argparse._SubParsersAction) -> None:
    """Register flops and presets."""
    s = sub.add_parser("flops", help="analytic training FLOPs per token (teacher and SAE included) of a config")
    s.add_argument("--preset", help="a preset name (see `cocomix presets`)")
    s.add_argument("--config", help="a run config file (.json or .toml), or a run directory (its config.json); "
                   "with --preset, its fields replace the preset's")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. concept.cache=DIR")
    s.set_defaults(func=cmd_flops, resume=False, out="")

    s = sub.add_parser("presets", help="list presets, or print one as JSON")
    s.add_argument("name", nargs="?", help="the preset to print (default: list them all)")
    s.set_defaults(func=cmd_presets)

