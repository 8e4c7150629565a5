"""lm-evaluation-harness adapter: every cocomix model (NTP, CoCoMix, KD, pause) as an `lm_eval` LM (the
paper's downstream tasks, §3 Table 1; no paper equation).

`CocomixLM(run_dir)` answers the three request types of lm-eval 0.4:

* `loglikelihood(context, continuation)`: Σ log p(continuation tokens | context) and whether greedy decoding
  would produce exactly them. Tokens follow the HF adapter's convention: whole = encode(context + continuation),
  the continuation is whole[len(encode(context)):] (trailing whitespace of the context moves into the
  continuation, as lm-eval does); an empty context is the end-of-text token (lm-eval's prefix token: our stores
  separate documents with it), or the continuation's first token when that is the end-of-text token. Inputs
  longer than the scored length keep their last tokens (said once): that length (lm-eval's `max_length`) is the
  run's `data.seq_len`, the windows it was trained on, unless `max_length=N` (model_args) asks for up to the
  model's `context_length` (lm-eval's HF model takes the model's positions, but a cocomix run may be built with
  more positions than it trained: those are untrained). A continuation with no
  tokens of its own (empty, or merged into the context's last token) or longer than the scored length cannot
  be scored: a one-line error, where lm-eval's HF model stops on an assertion.
* `loglikelihood_rolling(text)`: the whole text's log-likelihood in disjoint windows of the scored length
  (lm-eval's `get_rolling_token_windows`), starting from the end-of-text token.
* `generate_until(context, {until, max_gen_toks, do_sample, temperature, top_k, top_p})`: KV-cached generation,
  `batch_size` requests at a time (`generate_ragged`: prompts of any lengths share a batch; each row ends alone),
  stopped at the end-of-text token (never part of the answer, as lm-eval adds it to the stop sequences) or as
  soon as a stop string appears, and cut at the first one; the length is lm-eval's (`max_gen_toks` or its
  aliases `max_new_tokens`, `max_tokens`, `max_completion_tokens`, default 256) and, as in lm-eval's HF model,
  must be below the scored length (the prompt keeps its last scored length − max_gen_toks tokens, said once).
  Sampling: `do_sample` unset means sampling iff temperature > 0, as lm-eval's HF model reads it; `do_sample` true
  without a temperature samples at 1, HF `generate`'s default (lm-eval's HF model passes temperature 0 there,
  which HF refuses), and an unset `top_k` samples from the 50 likeliest tokens, HF `generate`'s default (0 turns
  it off). Other options (`num_beams` above 1, ...) are refused.

Scoring runs in one precision for every method (fp32 by default; `dtype="bfloat16"` on GPU), in eval mode.
The adapter is lm-eval's model `cocomix`: registered when this module is imported (`simple_evaluate(model=
"cocomix", model_args="run=RUN")`), and declared as an `lm_eval.models` entry point for the plugin discovery
of the harness's plugin guide (lm-eval 0.4.13, the newest release here, does not scan entry points yet).
`eval/tasks.py`'s `run_tasks` runs lm-eval's tasks through it.

Under torchrun the adapter joins the process group (gloo on CPU, NCCL on CUDA, one GPU per local rank) and gives
lm-eval its rank, world size and collectives (`all_gather`, `gather_object`, `barrier`, the hooks of lm-eval's
`LM`): lm-eval then builds each rank's share of every task's documents and gathers the per-document metrics on
rank 0, which alone gets results (`tasks.run_tasks` leaves the process group afterwards).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cocomix.errors import CocomixWarning, ConfigError
from cocomix.eval.batch_size import CPU_AUTO, DEFAULT_MAX, largest_fitting, parse_batch_size

try:
    from lm_eval.api.model import LM
except ImportError:  # lm-eval is optional: importing this module still works, using the adapter does not
    LM = object  # type: ignore[misc,assignment]


DEFAULT_MAX_GEN_TOKS = 256
HF_TOP_K = 50  # transformers GenerationConfig's top_k when a sampling task sets none
_MAX_NEW_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
_NEUTRAL_GEN_KWARGS = {"num_beams": 1, "repetition_penalty": 1.0}  # HF generate options at values that change nothing
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CocomixLM(LM):  # type: ignore[misc,valid-type]
    """A cocomix run (directory or checkpoint) behind lm-eval's LM interface."""

    def __init__(self, run: str | Path, data: str | Path | None = None, device: str = "cpu",
                 dtype: str = "float32", batch_size: int | str = 8, max_batch_size: int | str = DEFAULT_MAX,
                 max_length: int | str | None = None) -> None:
        if LM is object:
            raise ConfigError("--tasks: lm-evaluation-harness is not installed (pip install lm-eval)")
        super().__init__()
        from cocomix.data.store import check_vocab
        from cocomix.runs import load_run, run_store
        from cocomix.train import distributed as dd
        from cocomix.train.device import resolve_device
        from cocomix.train.fail_fast import FailFast

        if dtype not in _DTYPES:
            raise ConfigError(f"dtype (eval --dtype): expected one of {sorted(_DTYPES)}, got {dtype!r}")
        # lm-eval's --batch_size is a string: "8", "auto"; the fields are named both ways (lm-eval's model_args and
        # `cocomix eval`'s flags)
        self._batch_asked = parse_batch_size(batch_size, "batch_size (eval --batch-size)")
        try:  # an integer >= 1 ("8" from lm-eval's model_args); 'auto' is no bound
            max_batch = parse_batch_size(max_batch_size, "max_batch_size")
        except ConfigError:
            max_batch = None
        if not isinstance(max_batch, int):
            raise ConfigError(f"max_batch_size (eval --max-batch-size): expected an integer >= 1, "
                              f"got {max_batch_size!r}")
        self.max_batch_size = max_batch
        self._batch: int | None = None if self._batch_asked == "auto" else int(self._batch_asked)
        # under torchrun: join the process group (gloo on CPU, NCCL on CUDA; cuda:LOCAL_RANK), and lm-eval gives each
        # rank its share of the documents and gathers the metrics on rank 0 through the collectives below
        self._ctx = dd.context_from_env()
        device = str(dd.setup(self._ctx, resolve_device(device, field="device (eval --device)")))
        self._rank, self._world_size = self._ctx.rank, self._ctx.world_size
        with FailFast(self._ctx):  # a rank that cannot load the run stops the others at once
            self.run_cfg, _, self.model, self.checkpoint = load_run(run, device=device)
            self.dtype = _DTYPES[dtype]
            self.model = self.model.to(self.dtype).eval()
            store = run_store(self.run_cfg, data, self.checkpoint)
            check_vocab(store, self.run_cfg.model.vocab_size)
            self.tok = store.tokenizer()
            self.eot = self.tok.eos_id if self.tok.eos_id is not None else 0
            self.max_length, self._length_name = self._scored_length(max_length)
            self._device = torch.device(device)
            self._warned: set[str] = set()
            if self._batch is None and self._world_size > 1:
                _ = self.batch_size  # under torchrun 'auto' is settled here, where every rank is (a collective)

    @property
    def batch_size(self) -> int:
        """Requests per batch: the fixed size, or `auto`'s, detected on first use (under torchrun when the adapter
        is made, the smallest over the ranks)."""
        if self._batch is None:
            if self._device.type != "cuda":
                self._batch = min(CPU_AUTO, self.max_batch_size)  # --max-batch-size bounds auto here too
                self._warn_once("batch", f"--batch-size auto on {self._device.type}: {self._batch} (only a GPU "
                                "reports running out of memory, which finding the largest batch needs)")
            else:
                self._batch = largest_fitting(self._probe, self.max_batch_size)
            if self._world_size > 1:
                t = torch.tensor([self._batch], device=self._device)
                dist.all_reduce(t, op=dist.ReduceOp.MIN)
                self._batch = int(t.item())
        return self._batch

    @torch.no_grad()
    def _probe(self, rows: int) -> None:
        """A scoring forward of `rows` sequences of the full context, as `_score` runs the longest batch."""
        ids = torch.zeros(rows, self.max_length, dtype=torch.long, device=self.model.lm_head.weight.device)
        F.log_softmax(self.model(ids).logits.float(), dim=-1)

    # ------------------------------------------------------------------ ranks (lm-eval's data parallelism)

    @property
    def device(self) -> torch.device:
        return self._device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor, concatenated in rank order (0-d tensors stacked); this one alone for one process."""
        if self._world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's object in rank order on rank `dst`, None on the others."""
        if self._world_size == 1:
            return [obj]
        out: list[Any] | None = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            dist.barrier()

    # ------------------------------------------------------------------ scoring

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(Σ log p(cont | ctx), greedy?) for token-id pairs, in their order. Batched longest first (as lm-eval's
        HF model orders them, so that right-padding is small) and scored in fp32 on the continuation's rows."""
        if any(len(ctx) + len(cont) > self.max_length + 1 for ctx, cont in pairs):
            self._warn_once("score", f"a request longer than {self._length_name} {self.max_length} + 1 tokens is "
                            "scored on its last tokens (the context is cut on the left, as lm-eval's HF model does)")
        inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in pairs]
        for x, (_, cont) in zip(inputs, pairs, strict=True):
            if len(cont) > len(x):
                raise ConfigError(f"--tasks: a request's continuation is {len(cont)} tokens, more than "
                                  f"{self._length_name} {self.max_length} can score")
        order = sorted(range(len(pairs)), key=lambda i: -len(inputs[i]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(inputs[batch[0]])  # the longest of the batch
            ids = torch.full((len(batch), width), self.eot, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(inputs[i])] = torch.tensor(inputs[i])
            logits = self.model(ids.to(self._device)).logits  # (b, width, V)
            for row, i in enumerate(batch):
                n, end = len(pairs[i][1]), len(inputs[i])
                logp = F.log_softmax(logits[row, end - n:end].float(), dim=-1)  # (n, V): the rows predicting it
                target = torch.tensor(pairs[i][1], device=logp.device)
                out[i] = (float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all()))
        return out

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())  # all trailing whitespace, as lm-eval's TemplateLM
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:  # lm-eval: the prefix token, unless the continuation starts with it
            whole = self.encode(continuation)
            ctx, cont = (whole[:1], whole[1:]) if whole[:1] == [self.eot] else ([self.eot], whole)
        else:
            whole, ctx = self.encode(context + continuation), self.encode(context)
            cont = whole[len(ctx):]
        if not cont:  # it would score log p = 0 and count as greedy: a choice that always wins
            raise ConfigError(f"--tasks: the continuation {continuation!r} of the context …{context[-40:]!r} has no "
                              "tokens of its own (empty, or merged into the context's last token); lm-eval's HF "
                              "model refuses such a request too")
        return ctx, cont

    # ------------------------------------------------------------------ lm-eval interface

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([self._pair(*req.args) for req in requests])

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            (text,) = req.args[:1]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.encode(text), prefix_token=self.eot, max_seq_len=self.max_length, context_len=1)]
            out.append(sum(score for score, _ in self._score(windows)))
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Requests with the same generation options run `batch_size` at a time, longest prompt first (as lm-eval's
        HF model orders them), through `generate_ragged`; the answers come back in the requests' order."""
        from cocomix.model import generate_ragged

        groups: dict[str, list[int]] = {}
        jobs = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            until, max_new, sampling = self._gen_kwargs(dict(kwargs or {}))
            ids = self.encode(context) or [self.eot]
            if len(ids) > self.max_length - max_new:
                self._warn_once("generate", f"a generation prompt of {len(ids)} tokens keeps its last "
                                f"{self.max_length - max_new} ({self._length_name} {self.max_length} − max_gen_toks "
                                f"{max_new}), as lm-eval's HF model does")
                ids = ids[-(self.max_length - max_new):]
            jobs.append((ids, until, max_new, sampling))
            groups.setdefault(repr((until, max_new, sorted(sampling.items()))), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            members.sort(key=lambda i: -len(jobs[i][0]))
            for first in range(0, len(members), self.batch_size):
                batch = members[first:first + self.batch_size]
                _, until, max_new, sampling = jobs[batch[0]]

                def stopped(row: int, new: list[int], until: list[str] = until) -> bool:
                    text = self.tok.decode(new)
                    return any(s in text for s in until if s)

                answers = generate_ragged(self.model, [jobs[i][0] for i in batch], max_new,
                                          eos_id=self.tok.eos_id, stop=stopped if until else None,
                                          vocab_limit=self.tok.vocab_size, **sampling)
                for i, new in zip(batch, answers, strict=True):
                    out[i] = self._answer(new, until)
        return out

    def _answer(self, new: list[int], until: list[str]) -> str:
        """The text of generated tokens, without the end-of-text token and cut at the first stop string."""
        if self.tok.eos_id in new:  # the end-of-text token stops the answer and is not part of it
            new = new[:new.index(self.tok.eos_id)]
        text = self.tok.decode(new)
        return text[:min([text.find(s) for s in until if s and s in text], default=len(text))]

    def _gen_kwargs(self, kwargs: dict[str, Any]) -> tuple[list[str], int, dict[str, Any]]:
        """(stop strings, new tokens, sampling arguments of `generate`) from a request's generation kwargs, read as
        lm-eval's `normalize_gen_kwargs` and its HF model read them; an option we cannot honour is an error."""
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        # lm-eval's aliases, in its priority order, and its default of 256
        alias = next((k for k in _MAX_NEW_ALIASES if kwargs.get(k) is not None), None)
        max_new = _gen_option(alias, kwargs[alias], whole=True) if alias else DEFAULT_MAX_GEN_TOKS
        for k in _MAX_NEW_ALIASES:
            kwargs.pop(k, None)
        if not 1 <= max_new < self.max_length:
            limit = self.model.cfg.context_length
            more = f", or eval --seq-len up to the model's context_length {limit}" if self.max_length < limit else ""
            raise ConfigError(f"--tasks: a task asks for max_gen_toks {max_new}; expected 1 to {self.max_length - 1} "
                              f"({self._length_name} {self.max_length} must keep room for the prompt; "
                              f"set max_gen_toks in the task's generation_kwargs{more})")
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is not None and not isinstance(do_sample, bool):
            raise ConfigError(f"--tasks: generation option do_sample={do_sample!r}: expected true or false")
        # sampling when asked, or (do_sample unset) at a temperature above 0; HF's default temperature is 1
        temperature = kwargs.pop("temperature", None)
        temperature = (_gen_option("temperature", temperature) if temperature is not None
                       else (1.0 if do_sample else 0.0))
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        top_k = None if top_k is None else _gen_option("top_k", top_k, whole=True)
        top_p = None if top_p is None else _gen_option("top_p", top_p)
        for key, neutral in _NEUTRAL_GEN_KWARGS.items():
            if kwargs.get(key, neutral) == neutral:
                kwargs.pop(key, None)
        if kwargs:
            key = sorted(kwargs)[0]
            raise ConfigError(f"--tasks: generation option {key}={kwargs[key]!r} is not supported by the cocomix "
                              "model (supported: until, max_gen_toks, do_sample, temperature, top_k, top_p)")
        sample = bool(do_sample) if do_sample is not None else temperature > 0.0
        if not sample or temperature == 0.0:
            return until, max_new, {"temperature": 0.0}
        # an unset top_k is HF generate's default of 50 (`GenerationConfig`), as lm-eval's HF model samples; 0 is off
        return until, max_new, {"temperature": temperature, "top_k": HF_TOP_K if top_k is None else (top_k or None),
                                "top_p": None if top_p is None or top_p >= 1.0 else top_p}

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> CocomixLM:
        """What `lm-eval --model cocomix --model_args run=RUN,...` calls (see `create_from_arg_obj`)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> CocomixLM:
        """The adapter from lm-eval's model_args (run, data, device, dtype, batch_size, max_batch_size, max_length)
        and its own settings (batch_size, max_batch_size, device); other arguments are errors."""
        known = ("run", "data", "device", "dtype", "batch_size", "max_batch_size", "max_length")
        unknown = sorted(set(arg_dict) - set(known))
        if unknown or "run" not in arg_dict:
            raise ConfigError(f"model_args: {'unknown argument ' + repr(unknown[0]) if unknown else 'no run'}; "
                              f"expected run=RUN_DIR and optionally {', '.join(known[1:])}")
        # lm-eval's own settings (a CLI's device and batch sizes), overridden by model_args
        args = {k: v for k, v in (additional_config or {}).items() if v is not None and k in known}
        args.update({k: v for k, v in arg_dict.items() if v is not None})
        return cls(**{k: str(v) if k in ("run", "data", "device", "dtype") else v for k, v in args.items()})

    def _scored_length(self, asked: int | str | None) -> tuple[int, str]:
        """(the most tokens one forward scores, what set it): `max_length` when given (1 to the model's
        context_length), else the run's data.seq_len, the windows it was trained on — a model's positions past
        them are untrained (GPT-2's position embeddings, RoPE beyond its trained range), and `cocomix eval`'s
        validation loss reads windows of that length too — or context_length where that is smaller."""
        limit = self.model.cfg.context_length
        if asked is not None:
            try:
                value = int(asked)
            except (TypeError, ValueError):
                value = 0
            if isinstance(asked, bool) or not 1 <= value <= limit or str(value) != str(asked).strip():
                raise ConfigError(f"max_length (eval --seq-len): expected an integer from 1 to the model's "
                                  f"context_length {limit}, got {asked!r}")
            return value, "max_length"
        trained = self.run_cfg.data.seq_len
        if trained < limit:
            return trained, "the run's data.seq_len"
        return limit, "context_length"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"--tasks: {message} (said once)", CocomixWarning, stacklevel=3)


def _register() -> None:
    """lm-eval's model name `cocomix` (its built-in names are registered first: lm-eval loads them only into an
    empty registry)."""
    if LM is object:
        return
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import get_model, register_model

    try:
        known = get_model("cocomix")
    except ValueError:
        known = None
    if known is None or (known.__module__, known.__qualname__) != (CocomixLM.__module__, CocomixLM.__qualname__):
        register_model("cocomix")(CocomixLM)  # (a re-import of this module finds its first class registered)


_register()


def _gen_option(key: str, value: Any, whole: bool = False) -> Any:
    """A task's numeric generation option: an integer (`whole`) or a real number, else a ConfigError naming it
    (a string, a bool or 3.9 tokens would otherwise be converted into another request than the task's)."""
    import numbers

    from cocomix.model.generate import whole_number

    if not (whole_number(value) if whole else isinstance(value, numbers.Real) and not isinstance(value, bool)):
        raise ConfigError(f"--tasks: generation option {key}={value!r}: expected "
                          f"{'an integer' if whole else 'a number'}")
    return int(value) if whole else float(value)
