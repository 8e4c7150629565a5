"""The `cocomix` command: one subcommand per user task, each a thin wrapper of one library function.

    cocomix prepare   corpus -> tokenizer + train/val token memmaps        (cocomix.data.prepare)
    cocomix train     train a run from a preset / config file / overrides  (cocomix.train.train)
    cocomix eval      validation loss / perplexity, or lm-eval tasks       (cocomix.eval.evaluate_loss, .harness)
    cocomix generate  sample text from a checkpoint with the KV cache      (cocomix.model.generate)
    cocomix export    write an NTP, KD or prediction-only checkpoint as a transformers model (export_hf)
    cocomix train-sae train a TopK SAE on a teacher's residual stream      (cocomix.sae.training.train_sae)
    cocomix extract-concepts  cache concept targets of a token store        (cocomix.concepts.cache)
    cocomix describe-concepts  name latents by their top activating contexts (cocomix.concepts.describe)
    cocomix inspect   a student's predicted concepts per token: table, HTML (cocomix.interpret.inspect)
    cocomix steer     generation with concepts' logits scaled by α          (cocomix.interpret.steer)
    cocomix steer-eval  the steering metric over concepts, prompts and α   (cocomix.interpret.steer_eval)
    cocomix compression  row norms of the compression layer                (cocomix.interpret.compression)
    cocomix compare   table and plots of several runs, token efficiency     (cocomix.eval.compare)
    cocomix flops     analytic training FLOPs per token and active parameters (cocomix.flops)
    cocomix presets   list presets or print one as JSON
    cocomix experiment  the `make experiment` study (every method, several seeds)  (cocomix.experiment)
    cocomix demo      the `make demo` pipeline: teacher → SAE → targets → NTP vs CoCoMix → report

A user error (bad value, missing or corrupt file) prints one line `cocomix: error: ...` and exits with code 2
(`cocomix --debug …` shows its traceback instead).

No paper equation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cocomix import __version__, cli_parser, strict_json
from cocomix.cli_concepts import add_concept_commands
from cocomix.cli_interpret import add_interpret_commands
from cocomix.cli_parser import (
    DEVICE_HELP,
    Parser,
    add_debug,
    add_run,
    as_flag,
    merge_run,
    seed_arg,
    short_warnings,
    subcommand,
    utf8_text,
)
from cocomix.cli_run import add_run_commands, add_setup_commands
from cocomix.errors import CocomixError, ConfigError, Stopped
from cocomix.eval.batch_size import DEFAULT_MAX, parse_batch_size
from cocomix.seeding import torch_seed


def _batch_size_arg(text: str) -> int | str:
    """`--batch-size`: an integer >= 1 or 'auto' (argparse says what is wrong, exit 2)."""
    try:
        return parse_batch_size(text)
    except CocomixError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--batch-size: ")) from None


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from cocomix.data.store import check_vocab
    from cocomix.errors import ConfigError
    from cocomix.eval import evaluate_loss
    from cocomix.progress import ProgressLine
    from cocomix.runs import load_run, run_store
    from cocomix.train import distributed as dd
    from cocomix.train.device import resolve_device
    from cocomix.train.fail_fast import FailFast

    cli_parser.warn_on_rank0_only()  # under torchrun rank 0 alone warns and prints
    tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    if tasks == []:
        raise ConfigError(f"--tasks: expected comma-separated lm-eval task names, got {args.tasks!r}")
    perplexity_only = {"--split": args.split, "--batches": args.batches}
    tasks_only = {"--limit": args.limit, "--include-path": args.include_path,
                  "--max-batch-size": args.max_batch_size}
    if args.batch_size == "auto" and not tasks:
        raise ConfigError("--batch-size: 'auto' is for lm-eval --tasks; the validation loss takes an integer")
    for flag, value in (perplexity_only if tasks else tasks_only).items():
        if value is not None:  # an option the chosen evaluation would ignore
            raise ConfigError(f"{flag}: " + ("a perplexity option; lm-eval --tasks do not use it" if tasks
                                             else "an lm-eval option; it needs --tasks"))
    if tasks and args.max_batch_size is not None and isinstance(args.batch_size, int):
        raise ConfigError(f"--max-batch-size: sets where --batch-size auto starts; a fixed --batch-size "
                          f"{args.batch_size} does not use it")
    if args.batch_size is None:  # not given: 8, or the largest that fits when --max-batch-size says where to start
        args.batch_size = "auto" if tasks and args.max_batch_size is not None else 8
    if tasks:
        from cocomix.eval.tasks import run_tasks

        most = DEFAULT_MAX if args.max_batch_size is None else args.max_batch_size
        res = run_tasks(args.run, tasks, include_path=args.include_path,
                        limit=args.limit or None, device=str(resolve_device(args.device, "--device")), dtype=args.dtype,
                        batch_size=args.batch_size, max_batch_size=most, data=args.data, max_length=args.seq_len)
        if res is not None:  # (under torchrun, rank 0 prints for every rank)
            print(strict_json.dumps({"checkpoint": res["checkpoint"], "results": res["results"]}, indent=2,
                                    default=str))
        return 0
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 2),
                               ("--batches", args.batches, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{flag}: expected an integer >= {least}" + (" (0: the whole split)" if least == 0
                                                                          else "") + f", got {value}")
    # under torchrun every rank takes every world_size-th batch and the sums are all-reduced: the same windows and
    # mean as one process (as periodic validation in training), printed once, by rank 0
    ctx = dd.context_from_env()
    device = dd.setup(ctx, resolve_device(args.device, "--device"))
    try:
        with FailFast(ctx):  # any rank's error stops the others at once
            run, method, model, ckpt = load_run(args.run, device=device)
            store = run_store(run, args.data, ckpt)
            check_vocab(store, run.model.vocab_size)
            seq_len = args.seq_len if args.seq_len is not None else run.data.seq_len
            split = args.split or "val"
            model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
            line = ProgressLine("eval", 0, enabled=ctx.is_main)

            def report(done: int, total: int) -> None:
                line.total = total
                line.update(done)

            try:
                res = evaluate_loss(method, model, store, split, seq_len, args.batch_size, args.batches or 0,
                                    progress=report if ctx.is_main else None, shard=(ctx.rank, ctx.world_size),
                                    sum_over_shards=lambda t: dd.sum_over_ranks(t, ctx))
            finally:
                line.close()  # (an error or Ctrl-C is said on its own line)
    finally:
        dd.teardown(ctx)
    if ctx.is_main:
        print(strict_json.dumps({"checkpoint": str(ckpt), "split": split, "seq_len": seq_len, "dtype": args.dtype,
                                 **res}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from cocomix.data.store import check_vocab
    from cocomix.model import generate
    from cocomix.model.generate import check_sampling
    from cocomix.runs import load_run, run_store
    from cocomix.train.device import resolve_device

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise CocomixError(f"--num-samples: expected a positive integer, got {args.num_samples}")
    device = resolve_device(args.device, "--device")
    run, _, model, ckpt = load_run(args.run, device=device)
    store = run_store(run, args.data, ckpt)
    check_vocab(store, run.model.vocab_size)
    tok = store.tokenizer()
    ids = tok.encode(args.prompt)
    if not ids:
        raise CocomixError("--prompt: encodes to no tokens; give some text")
    gen = torch.Generator(device=device).manual_seed(torch_seed(args.seed))
    for i in range(args.num_samples):
        out, _ = generate(model, torch.tensor([ids], device=device), args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          eos_id=tok.eos_id, generator=gen, vocab_limit=tok.vocab_size)
        if i:
            print("-" * 40)  # between samples
        print(tok.decode(out[0].tolist()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cocomix.export import export_hf
    from cocomix.runs import load_run

    run, _, model, ckpt = load_run(args.run)
    tok_dir = None
    if args.no_tokenizer and args.data is not None:
        raise CocomixError("--data: read for the tokenizer only; drop it, or drop --no-tokenizer")
    if not args.no_tokenizer:
        tok_dir = Path(args.data or run.data.path).expanduser() / "tokenizer"
        if not tok_dir.is_dir():
            raise CocomixError(f"{tok_dir}: tokenizer not found; point --data at the run's token store or pass "
                               "--no-tokenizer to export the weights alone")
        from cocomix.runs import check_tokenizer

        check_tokenizer(tok_dir, ckpt, "point --data at the run's token store")  # as eval and generate check it
    try:
        folder = export_hf(model, args.out, tokenizer_dir=tok_dir)
    except CocomixError as e:  # the output folder's problems name the flag
        raise (CocomixError(f"--out {e}") if str(e).startswith(f"{args.out}: export target") else e) from None
    print(json.dumps({"exported": str(folder), "flavour": run.model.flavour}))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cocomix.atomic import check_out_folder
    from cocomix.eval.compare import compare

    check_out_folder(args.out, own=("a run comparison (compare)",))  # refused before reading the runs ...
    res = compare(args.runs, args.out, reference=args.reference,  # ... the note only once they are read and checked
                  before_writing=lambda: check_out_folder(args.out, own=("a run comparison (compare)",),
                                                          replaces=True))
    print(res["table"], end="")
    print(f"written: {', '.join(str(f) for f in res['files'])}", file=sys.stderr)
    return 0


def _stage_steps(args: argparse.Namespace) -> dict[str, int] | None:
    """--steps for every stage of demo / experiment (None: the defaults), checked before any stage runs."""
    if not 0 <= args.steps < 2**63:  # (a run's config holds integers up to 2**64: one it could not read back)
        raise CocomixError(f"--steps: expected a positive integer below 2**63 (0: the defaults), got {args.steps}")
    return {"teacher": args.steps, "sae": args.steps, "student": args.steps} if args.steps else None


def cmd_experiment(args: argparse.Namespace) -> int:
    from cocomix.experiment import run_experiment

    if args.seeds < 1:
        raise CocomixError(f"--seeds: expected a positive integer, got {args.seeds}")
    run_experiment(args.data, args.out, seeds=args.seeds, steps=_stage_steps(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cocomix.demo import run_demo

    run_demo(args.data, args.out, steps=_stage_steps(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cocomix", description="Pretrain LMs with Continuous Concept Mixing.")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p.add_argument("--version", action="version", version=f"cocomix {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_run_commands(sub)

    s = sub.add_parser("eval", help="validation loss / perplexity of a checkpoint")
    add_run(s, "run directory (latest checkpoint) or checkpoint directory")
    s.add_argument("--data", help="token store (default: the run's)")
    s.add_argument("--split", choices=("train", "val"), help="split for the perplexity (default: val)")
    s.add_argument("--seq-len", type=int, help="perplexity window length, or with --tasks the most tokens one "
                   "forward scores, up to the model's context_length (default: the run's data.seq_len)")
    s.add_argument("--batch-size", type=_batch_size_arg, default=None,
                   help="windows (validation loss) or requests (lm-eval) per batch (default 8; with "
                        "--max-batch-size, auto); 'auto' (lm-eval): the largest that fits on the GPU, from "
                        "--max-batch-size down")
    s.add_argument("--max-batch-size", type=int, default=None,
                   help=f"lm-eval: where 'auto' starts (default {DEFAULT_MAX}); given alone, it means "
                        "--batch-size auto")
    s.add_argument("--batches", type=int, help="perplexity: limit the number of batches (default: whole split)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--tasks", help="lm-eval tasks instead of perplexity, e.g. lambada_openai,wikitext,hellaswag,"
                                   "piqa,social_iqa,arc_easy,winogrande (needs lm-eval; hub tasks need internet)")
    s.add_argument("--include-path", help="folder of local lm-eval task YAML files (offline tasks)")
    s.add_argument("--limit", type=int, help="items per task (default: all)")
    s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="precision used for every method alike")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("generate", help="sample text from a checkpoint")
    add_run(s, "run directory (latest checkpoint) or checkpoint directory")
    s.add_argument("--prompt", required=True, type=utf8_text, help="text to continue")
    s.add_argument("--data", help="token store whose tokenizer to use (default: the run's)")
    s.add_argument("--max-new-tokens", type=int, default=100,
                   help="tokens to generate; prompt + these must fit the model's context_length")
    s.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set with this mass")
    s.add_argument("--num-samples", type=int, default=1, help="continuations to print")
    s.add_argument("--seed", type=seed_arg, default=0, help="sampling seed")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("export", help="export an NTP, KD or prediction-only CoCoMix checkpoint as a transformers "
                       "model folder")
    add_run(s, "run directory (latest checkpoint) or checkpoint directory")
    s.add_argument("--out", required=True, help="new (or empty) folder for config.json, model.safetensors and the "
                                               "tokenizer")
    s.add_argument("--data", help="token store whose tokenizer to copy (default: the run's)")
    s.add_argument("--no-tokenizer", action="store_true", help="export the weights without a tokenizer")
    s.set_defaults(func=cmd_export)

    add_concept_commands(sub)
    add_interpret_commands(sub)

    s = sub.add_parser("compare", help="compare runs: Markdown table, loss-vs-tokens/FLOPs plots, token efficiency")
    s.add_argument("runs", nargs="+", help="run directories; names differing only by -seedN are grouped")
    s.add_argument("--out", default="compare", help="folder for compare.md and the PNG plots")
    s.add_argument("--reference", help="group (or one of its run directories) the token efficiency is measured "
                   "against (default: the first)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("demo", help="the make-demo pipeline: teacher, SAE, targets, NTP vs CoCoMix, report")
    s.add_argument("--data", default="data/shakespeare", help="token store (prepared here if missing)")
    s.add_argument("--out", default="runs/demo", help="folder of every stage's output and the report")
    s.add_argument("--steps", type=int, default=0, help="steps of every stage (0: the demo's defaults)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("experiment", help="the make-experiment study: NTP, CoCoMix, KD, pause, activation "
                                          "selection, FLOPs-matched NTP, several seeds")
    s.add_argument("--data", default="data/shakespeare", help="token store (prepared here if missing)")
    s.add_argument("--out", default="runs/demo",
                   help="output folder (default runs/demo: reuses the demo's teacher, SAE and targets)")
    s.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    s.add_argument("--steps", type=int, default=0, help="steps of every stage (0: the demo's defaults)")
    s.set_defaults(func=cmd_experiment)
    add_setup_commands(sub)
    add_debug(p)
    return p


TORCHRUN_COMMANDS = ("train", "train-sae", "extract-concepts", "describe-concepts", "eval")
"""The commands whose processes share the work under torchrun; the others would each do all of it."""


def _check_torchrun(command: str) -> None:
    """ConfigError for a one-process command started by torchrun (TORCHELASTIC_RUN_ID) with several processes
    (WORLD_SIZE > 1); a launcher that sets WORLD_SIZE in every container (Kubeflow, SageMaker) is left alone."""
    world = os.environ.get("WORLD_SIZE", "1")
    if (command not in TORCHRUN_COMMANDS and "TORCHELASTIC_RUN_ID" in os.environ
            and world.strip() not in ("", "0", "1")):
        raise ConfigError(f"{command}: runs in one process, but torchrun started {world} (WORLD_SIZE); start it "
                          f"without torchrun (under torchrun: {', '.join(TORCHRUN_COMMANDS)})")


PATH_OPTIONS = ("out", "data", "html", "config", "run", "teacher", "sae", "concepts", "include_path", "adopt",
                "tokenizer")
"""Options (argparse dests) that name a file, folder or model; an empty one is refused."""


def main(argv: Sequence[str] | None = None) -> int:
    short_warnings()
    if "utf" not in (getattr(sys.stdout, "encoding", None) or "utf").lower() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # (a Latin-1 locale: λ, ≥ in tables, generated text)
    parser = build_parser()
    cli_parser.ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's parser, so the hint is `cocomix COMMAND --help`
        subcommand(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    merge_run(args, parser)
    command = subcommand(parser, args.command)
    for dest in PATH_OPTIONS:  # "" is no path: read as the current folder it would be written or read there
        if getattr(args, dest, None) == "" and command.get_default(dest) != "":  # (given, not a command's default)
            command.error(f"argument --{dest.replace('_', '-')}: expected a path, got an empty string")
        value = getattr(args, dest, None)
        if isinstance(value, str) and value.startswith("~"):  # `--out=~/x`: the shell expands `--out ~/x` only
            setattr(args, dest, os.path.expanduser(value))
    try:
        _check_torchrun(args.command)
        code = args.func(args)
        sys.stdout.flush()  # a reader that left (a closed pipe) is found here, not in the flush at exit
        return code
    except CocomixError as e:
        if args.debug:
            raise
        values = [x for v in vars(args).values() for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
        given = [form for v in values for form in (v, str(Path(v)))]  # (paths the message may name, as given and
        message = as_flag(" ".join(str(e).split()), parser, args.command, given)  # as a library writes them)
        print("cocomix: error: " + message, file=sys.stderr)  # always one line
        return 2
    except BrokenPipeError:  # `cocomix … | head`: the reader left; what it did not read is no error of ours
        if args.debug:
            raise
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not raise again
        except (OSError, ValueError):  # stdout is no file (redirected in-process): nothing is flushed at exit
            pass
        return 128 + 13  # as a process ended by SIGPIPE
    except OSError as e:  # a file the command cannot read or write: permissions, a full disk, a path in the way
        if args.debug:
            raise
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        what = e.strerror or " ".join(str(e).split())
        print(f"cocomix: error: {where + ': ' if where else ''}{what}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / SIGINT in train-sae or extract-concepts: progress saved
        print(f"cocomix: stopped by {e.name}; {e.detail}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("cocomix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
