"""lm-evaluation-harness adapter: every cocomix model (NTP, CoCoMix, KD, pause) as an `lm_eval` LM.

`CocomixLM(run_dir)` answers the three request types of lm-eval 0.4:

* `loglikelihood(context, continuation)`: Σ log p(continuation tokens | context) and whether greedy decoding
  would produce exactly them. Tokens follow the HF adapter's convention: whole = encode(context + continuation),
  the continuation is whole[len(encode(context)):] (trailing whitespace of the context moves into the
  continuation, as lm-eval does); an empty context is replaced by the end-of-text token. Inputs longer than the model's
  context keep their last `context_length` tokens.
* `loglikelihood_rolling(text)`: the whole text's log-likelihood in disjoint windows of `context_length`
  (lm-eval's `get_rolling_token_windows`), starting from the end-of-text token.
* `generate_until(context, {until, max_gen_toks, temperature, do_sample})`: KV-cached generation, cut at the
  end-of-text token (never part of the answer, as lm-eval adds it to the stop sequences) and at the first stop
  string; the length is lm-eval's (`max_gen_toks` or its aliases `max_new_tokens`, `max_tokens`,
  `max_completion_tokens`, default 256), capped at context_length − 1 so that at least one context token remains.
  A continuation longer than the context cannot be scored: a one-line error.

Scoring runs in one precision for every method (fp32 by default; `dtype="bfloat16"` on GPU), in eval mode.
`run_tasks` calls `lm_eval.simple_evaluate` with a `TaskManager` that also scans `include_path` (local task YAML
files, e.g. JSONL-backed tasks that need no network); when every requested task is defined there, lm-eval's
built-in task index (seconds to build) is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cocomix.errors import ConfigError

try:
    from lm_eval.api.model import LM
except ImportError:  # lm-eval is optional: importing this module still works, using the adapter does not
    LM = object  # type: ignore[misc,assignment]


DEFAULT_MAX_GEN_TOKS = 256
_MAX_NEW_ALIASES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


class CocomixLM(LM):  # type: ignore[misc,valid-type]
    """A cocomix run (directory or checkpoint) behind lm-eval's LM interface."""

    def __init__(self, run: str | Path, data: str | Path | None = None, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 8) -> None:
        if LM is object:
            raise ConfigError("--tasks: lm-evaluation-harness is not installed (pip install lm-eval)")
        super().__init__()
        from cocomix.data.store import check_vocab
        from cocomix.runs import load_run, run_store

        self.run_cfg, _, self.model, self.checkpoint = load_run(run, device=device)
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = self.model.to(self.dtype).eval()
        store = run_store(self.run_cfg, data, self.checkpoint)
        check_vocab(store, self.run_cfg.model.vocab_size)
        self.tok = store.tokenizer()
        self.eot = self.tok.eos_id if self.tok.eos_id is not None else 0
        self.max_length = self.model.cfg.context_length
        self.batch_size = batch_size
        self._device = torch.device(device)

    # ------------------------------------------------------------------ scoring

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(Σ log p(cont | ctx), greedy?) for token-id pairs; batched by right-padding, scored in fp32."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start:start + self.batch_size]
            inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in batch]
            width = max(len(x) for x in inputs)
            ids = torch.full((len(batch), width), self.eot, dtype=torch.long)
            for i, x in enumerate(inputs):
                ids[i, :len(x)] = torch.tensor(x)
            logp = F.log_softmax(self.model(ids.to(self._device)).logits.float(), dim=-1)  # (b, width, V)
            for i, (x, (_, cont)) in enumerate(zip(inputs, batch, strict=True)):
                n = len(cont)
                if n > len(x):
                    raise ConfigError(f"--tasks: a request's continuation is {n} tokens, more than the model's "
                                      f"context_length {self.max_length} can score")
                rows = logp[i, len(x) - n:len(x)]  # the positions that predict the continuation
                target = torch.tensor(cont, device=rows.device)
                out.append((float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
        return out

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())  # all trailing whitespace, as lm-eval's TemplateLM
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.eot], self.encode(continuation)
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx):]

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
        from cocomix.model import generate

        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            # lm-eval's aliases, in its priority order, and its default of 256 (`normalize_gen_kwargs`)
            asked = next((kwargs[k] for k in _MAX_NEW_ALIASES if kwargs.get(k) is not None), DEFAULT_MAX_GEN_TOKS)
            max_new = min(int(asked), self.max_length - 1)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            ids = (self.encode(context) or [self.eot])[-(self.max_length - max_new):]
            tokens, _ = generate(self.model, torch.tensor([ids], device=self._device), max_new,
                                 temperature=temperature, eos_id=self.tok.eos_id)
            new = tokens[0, len(ids):].tolist()
            if self.tok.eos_id in new:  # the end-of-text token stops the answer and is not part of it
                new = new[:new.index(self.tok.eos_id)]
            text = self.tok.decode(new)
            cut = min([text.find(s) for s in until if s and s in text], default=len(text))
            out.append(text[:cut])
        return out


def run_tasks(run: str | Path, tasks: list[str], include_path: str | Path | None = None, limit: int | None = None,
              device: str = "cpu", dtype: str = "float32", batch_size: int = 8, data: str | None = None,
              log_samples: bool = False) -> dict[str, Any]:
    """lm_eval.simple_evaluate on a cocomix run (its result dict, plus `checkpoint`: the folder scored);
    `include_path` adds local task YAML folders."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("--tasks: lm-evaluation-harness is not installed (pip install lm-eval)") from None
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit: expected a number >= 0 (0: every example), got {limit}")
    lm = CocomixLM(run, data=data, device=device, dtype=dtype, batch_size=batch_size)
    manager = _task_manager(TaskManager, tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: unknown task {unknown[0]!r} (local task folders go in --include-path)")
    res = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=log_samples,
                          batch_size=batch_size)
    res["checkpoint"] = str(lm.checkpoint)  # the checkpoint scored (a run directory's latest)
    return res


def _task_manager(manager_cls: Any, tasks: list[str], include_path: str | Path | None) -> Any:
    """The lm-eval `TaskManager` that `tasks` need. Indexing lm-eval's own task folders reads ~15,000 YAML files
    (~11 s on 2 CPU cores); when every requested name is a task (not a group or tag, which may list built-in
    tasks) defined in `include_path`, a manager of that folder alone resolves them. (A local task named like a
    built-in one is then the local one; the full index of lm-eval 0.4.13 also prefers local definitions, older
    versions preferred the built-in ones: name local tasks apart.)"""
    if include_path:
        local = manager_cls(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_subtasks for t in tasks):
            return local
    return manager_cls(include_path=str(include_path) if include_path else None)
