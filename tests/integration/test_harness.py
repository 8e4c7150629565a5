"""lm-eval adapter: a local multiple-choice task on a CoCoMix checkpoint, offline; per-item log-likelihoods equal
a direct computation with the model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cocomix.data import TokenStore
from cocomix.errors import ConfigError
from cocomix.runs import load_run
from tests.cli import run_cli

pytest.importorskip("lm_eval")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval" / "shakespeare_mc.jsonl"
TASK = """task: shakespeare_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def cocomix_run(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("harness") / "run"
    sets = ["model.vocab_size=320", "model.context_length=64", f"data.path={store_dir}", "data.seq_len=32",
            "train.steps=20", "train.micro_batch_size=8", "train.eval_every=0", "train.warmup_steps=2",
            f"concept.teacher={concept_parts[0]}", f"concept.sae={concept_parts[1]}", "concept.n_latents=256",
            "concept.teacher_layer=1", "concept.mix_k=8"]
    r = run_cli("train", "--preset", "tiny-cocomix", *[x for kv in sets for x in ("--set", kv)], "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _task_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "items.jsonl")
    (folder / "shakespeare_mc.yaml").write_text(TASK.format(data=folder / "items.jsonl"))
    return folder


@torch.no_grad()
def _direct_loglik(model: torch.nn.Module, tok: object, context: str, continuation: str) -> float:
    """log p(continuation | context) straight from the model's logits."""
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    ids = torch.tensor([whole[:-1]])
    logp = F.log_softmax(model(ids).logits[0].double(), dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_local_task_loglikelihoods_equal_direct_scoring(cocomix_run: Path, tmp_path: Path) -> None:
    from cocomix.eval.tasks import run_tasks

    res = run_tasks(cocomix_run, ["shakespeare_mc"], include_path=_task_dir(tmp_path), log_samples=True)
    samples = res["samples"]["shakespeare_mc"]
    assert len(samples) == 24
    run, _, model, _ = load_run(cocomix_run)
    assert run.method == "cocomix"
    tok = TokenStore.open(run.data.path).tokenizer()
    worst, correct = 0.0, 0
    for s in samples:
        doc = s["doc"]
        ours = [_direct_loglik(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
        correct += int(max(range(4), key=lambda i: ours[i]) == doc["answer"])
    print(f"max |lm-eval - direct| log-likelihood over 96 choices: {worst:.3e}")
    assert worst < 1e-4, worst
    assert res["results"]["shakespeare_mc"]["acc,none"] == pytest.approx(correct / 24)


def test_cli_eval_tasks_runs_offline_and_rejects_unknown_tasks(cocomix_run: Path, tmp_path: Path) -> None:
    tasks = _task_dir(tmp_path)
    r = run_cli("eval", "--run", str(cocomix_run), "--tasks",
                "shakespeare_mc", "--include-path", str(tasks), "--limit", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    run, _, model, _ = load_run(cocomix_run)  # --limit 5: the task's first 5 items, scored as the model scores them
    tok = TokenStore.open(run.data.path).tokenizer()
    right = [max(range(4), key=lambda i, d=d: _direct_loglik(model, tok, d["question"], " " + d["choices"][i]))
             == d["answer"] for d in map(json.loads, FIXTURE.read_text().splitlines())]  # each of the 24 items
    assert out["results"]["shakespeare_mc"]["acc,none"] == pytest.approx(sum(right[:5]) / 5)
    assert sum(right[:5]) / 5 != pytest.approx(sum(right) / 24)  # so the check tells 5 items from all 24
    assert Path(out["checkpoint"]).parent == cocomix_run / "checkpoints"  # the step scored, not just the run
    r = run_cli("eval", "--run", str(cocomix_run), "--tasks", "nope_task", "--include-path", str(tasks))
    assert r.returncode == 2 and "unknown task 'nope_task'" in r.stderr


GEN_TASK = """task: shakespeare_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 5
metric_list:
  - metric: exact_match
"""


def test_a_local_generation_task_runs_through_lm_eval_in_batches(cocomix_run: Path, tmp_path: Path) -> None:
    """lm-eval's own generate_until path: its requests reach the batched adapter and every answer equals the
    adapter's one-request answer."""
    from types import SimpleNamespace

    from cocomix.eval.harness import CocomixLM
    from cocomix.eval.tasks import run_tasks

    folder = _task_dir(tmp_path)
    (folder / "shakespeare_gen.yaml").write_text(GEN_TASK.format(data=folder / "items.jsonl"))
    res = run_tasks(cocomix_run, ["shakespeare_gen"], include_path=folder, batch_size=5, log_samples=True)
    samples = res["samples"]["shakespeare_gen"]
    assert len(samples) == 24 and 0.0 <= res["results"]["shakespeare_gen"]["exact_match,none"] <= 1.0
    lm = CocomixLM(cocomix_run, batch_size=1)
    for s in samples:
        (alone,) = lm.generate_until([SimpleNamespace(args=(s["doc"]["question"], {"until": ["."],
                                                                                    "max_gen_toks": 5}))])
        assert s["resps"][0][0] == alone


def test_torchrun_shares_the_documents_between_ranks_and_reports_every_one(cocomix_run: Path,
                                                                            tmp_path: Path) -> None:
    """`cocomix eval --tasks` under torchrun (2 gloo processes): lm-eval gives each rank half the documents and
    gathers them on rank 0, which prints the results once; they equal a one-process run's."""
    import subprocess
    import sys

    folder = _task_dir(tmp_path)
    (folder / "shakespeare_gen.yaml").write_text(GEN_TASK.format(data=folder / "items.jsonl"))
    # RUN positionally: torchrun's own parser takes `--run` for an abbreviation of its `--run-path`
    args = ["eval", str(cocomix_run), "--tasks", "shakespeare_mc,shakespeare_gen", "--include-path",
            str(folder), "--device", "cpu", "--batch-size", "4"]
    one = run_cli(*args)
    assert one.returncode == 0, one.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "cocomix", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"results"') == 1  # rank 0 alone prints
    assert "| 12/12" in r.stderr and "| 24/24" not in r.stderr  # lm-eval built 12 of the 24 documents per rank
    two = json.loads(r.stdout[r.stdout.index("{"):])
    want = json.loads(one.stdout)["results"]
    for task, key in (("shakespeare_mc", "acc,none"), ("shakespeare_gen", "exact_match,none")):
        assert two["results"][task][key] == pytest.approx(want[task][key], abs=1e-9), task
        assert two["results"][task].get("sample_len", 24) == 24


def test_generate_until_stops_at_end_of_text(cocomix_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end-of-text token ends the answer and is not part of it (lm-eval adds it to the stop sequences)."""
    from types import SimpleNamespace

    import cocomix.model as cm
    from cocomix.eval.harness import CocomixLM

    lm = CocomixLM(cocomix_run)
    req = SimpleNamespace(args=("To be, or not to be", {"until": ["\n\n"], "max_gen_toks": 20}))
    (text,) = lm.generate_until([req])
    assert isinstance(text, str) and lm.tok.eos_token not in text
    real, made = cm.generate_ragged, {}

    def ends_with_eos(model, prompts, n, **kw):  # noqa: ANN001, ANN003, ANN202
        assert len(prompts[0]) + n <= 32  # the prompt keeps at least one token and the total fits the 32 scored
        (new,) = real(model, prompts, 3, **kw)
        made["answer"] = new
        return [new + [lm.tok.eos_id] + new[-2:]]

    monkeypatch.setattr(cm, "generate_ragged", ends_with_eos)
    (text,) = lm.generate_until([req])
    assert text == lm.tok.decode(made["answer"]).split("\n\n")[0]


def test_generation_runs_in_batches_and_answers_as_one_request_at_a_time(cocomix_run: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests with the same options share batches of batch_size, longest prompt first, whatever their prompt
    lengths; each answer equals the one-request answer and comes back in the requests' order."""
    from types import SimpleNamespace

    import cocomix.model as cm
    from cocomix.eval.harness import CocomixLM

    texts = ["To be", "Now is the winter of our discontent", "O", "Friends, Romans, countrymen, lend me",
             "What light", "Shall I compare thee to a summer's day? Thou art more"]
    options = [{"until": ["\n\n"], "max_gen_toks": 9}, {"until": ["e"], "max_gen_toks": 6}]
    reqs = [SimpleNamespace(args=(t, options[i % 2])) for i, t in enumerate(texts)]

    def varied(batch_size: int) -> CocomixLM:  # the 20-step model answers with spaces: the same noise on both
        lm = CocomixLM(cocomix_run, batch_size=batch_size, max_length=64)  # every prompt whole (the longest: 34)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in lm.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        return lm

    alone = varied(1).generate_until(reqs)
    calls, real = [], cm.generate_ragged
    monkeypatch.setattr(cm, "generate_ragged", lambda m, prompts, n, **kw: calls.append((n, prompts))
                        or real(m, prompts, n, **kw))
    lm = varied(2)
    assert lm.generate_until(reqs) == alone
    assert len(set(alone)) == len(alone) and sum(len(a) for a in alone) > 20, alone  # varied, non-empty answers
    assert [(n, len(prompts)) for n, prompts in calls] == [(9, 2), (9, 1), (6, 2), (6, 1)]
    lengths = {n: [len(p) for _, prompts in calls if _ == n for p in prompts] for n in (9, 6)}
    for n, group in ((9, texts[0::2]), (6, texts[1::2])):
        assert lengths[n] == sorted((len(lm.encode(t)) for t in group), reverse=True)


def test_generation_length_follows_lm_evals_aliases_and_default(cocomix_run: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """max_gen_toks > max_new_tokens > max_tokens > max_completion_tokens, else lm-eval's default 256, which must
    leave room for the prompt in the scored length (the 32 tokens the run trained on here): as lm-eval's HF
    model, an error rather than a prompt cut to nothing."""
    from types import SimpleNamespace

    import cocomix.model as cm
    from cocomix.eval.harness import CocomixLM

    lm, asked = CocomixLM(cocomix_run), []
    real = cm.generate_ragged

    def record(model, prompts, n, **kw):  # noqa: ANN001, ANN003, ANN202
        asked.append(n)
        return real(model, prompts, 1, **kw)

    monkeypatch.setattr(cm, "generate_ragged", record)
    for kwargs in ({"max_new_tokens": 5}, {"max_tokens": 7, "max_completion_tokens": 9}, {"max_gen_toks": 2,
                   "max_new_tokens": 5}, {"max_completion_tokens": 9}, {"max_gen_toks": 31}):
        lm.generate_until([SimpleNamespace(args=("To be", {"until": ["\n"], **kwargs}))])
    assert asked == [5, 7, 2, 9, 31]
    for kwargs in ({}, {"max_gen_toks": 32}, {"max_gen_toks": 0}):
        with pytest.raises(ConfigError, match=r"max_gen_toks \d+; expected 1 to 31 \(the run's data\.seq_len 32"):
            lm.generate_until([SimpleNamespace(args=("To be", {"until": ["\n"], **kwargs}))])


def test_generation_options_are_read_as_lm_eval_normalises_them(cocomix_run: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """do_sample unset: sampling iff temperature > 0; do_sample true without a temperature: 1 (HF's default);
    top_k / top_p are passed on when sampling (an unset top_k is HF generate's 50, 0 is off); an option the model
    cannot honour is an error; a stop string ends generation as soon as it appears."""
    from types import SimpleNamespace

    import cocomix.model as cm
    from cocomix.eval.harness import CocomixLM

    lm, seen = CocomixLM(cocomix_run), []
    real = cm.generate_ragged

    def record(model, prompts, n, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append({k: kw.get(k) for k in ("temperature", "top_k", "top_p")})
        return real(model, prompts, n, **kw)

    monkeypatch.setattr(cm, "generate_ragged", record)
    cases = [({"temperature": 0.7}, {"temperature": 0.7, "top_k": 50, "top_p": None}),  # HF generate's top_k
             ({"do_sample": True}, {"temperature": 1.0, "top_k": 50, "top_p": None}),
             ({"do_sample": True, "top_k": 0}, {"temperature": 1.0, "top_k": None, "top_p": None}),  # 0: off
             ({"do_sample": False, "temperature": 0.7}, {"temperature": 0.0, "top_k": None, "top_p": None}),
             ({"do_sample": True, "temperature": 0.5, "top_k": 3, "top_p": 0.9},
              {"temperature": 0.5, "top_k": 3, "top_p": 0.9}),
             ({"temperature": 0.0, "top_k": 3, "num_beams": 1}, {"temperature": 0.0, "top_k": None, "top_p": None})]
    for kwargs, want in cases:
        lm.generate_until([SimpleNamespace(args=("To be", {"until": ["\n"], "max_gen_toks": 2, **kwargs}))])
        assert seen[-1] == want, (kwargs, seen[-1])
    with pytest.raises(ConfigError, match=r"generation option num_beams=4 is not supported"):
        lm.generate_until([SimpleNamespace(args=("To be", {"num_beams": 4, "max_gen_toks": 2}))])
    # an option of the wrong type is refused, not converted into another request (3.9 tokens, "false" as true)
    for bad, said in [({"max_gen_toks": "lots"}, "max_gen_toks='lots': expected an integer"),
                      ({"max_gen_toks": None, "max_new_tokens": 3.9}, "max_new_tokens=3.9: expected an integer"),
                      ({"max_gen_toks": True}, "max_gen_toks=True: expected an integer"),
                      ({"do_sample": "false"}, "do_sample='false': expected true or false"),
                      ({"do_sample": True, "temperature": "hot"}, "temperature='hot': expected a number"),
                      ({"do_sample": True, "top_p": "x"}, "top_p='x': expected a number"),
                      ({"do_sample": True, "top_k": 2.5}, "top_k=2.5: expected an integer")]:
        with pytest.raises(ConfigError, match=re.escape(f"--tasks: generation option {said}")):
            lm.generate_until([SimpleNamespace(args=("To be", {"max_gen_toks": 2, **bad}))])
    # the stop strings end a row as soon as its decoded new text holds one (`generate_ragged`'s `stop`)
    stops = []
    monkeypatch.setattr(cm, "generate_ragged", lambda *a, **kw: stops.append(kw["stop"]) or real(*a, **kw))
    lm.generate_until([SimpleNamespace(args=("To be", {"until": ["\n\n", "Q:"], "max_gen_toks": 2}))])
    stop = stops[-1]
    assert stop(0, lm.encode(" or not Q: x")) and stop(0, lm.encode(" or\n\n")) and not stop(0, lm.encode(" or not"))
    lm.generate_until([SimpleNamespace(args=("To be", {"until": [], "max_gen_toks": 2}))])
    assert stops[-1] is None


def test_an_empty_continuation_is_an_error_not_a_certain_choice(cocomix_run: Path) -> None:
    from types import SimpleNamespace

    from cocomix.eval.harness import CocomixLM

    lm = CocomixLM(cocomix_run)
    for context, continuation in (("To be", ""), ("", "")):
        with pytest.raises(ConfigError, match="has no tokens of its own"):
            lm.loglikelihood([SimpleNamespace(args=(context, continuation))])
    assert len(lm.loglikelihood([SimpleNamespace(args=("To be", " or"))])) == 1


def test_bad_task_arguments_are_one_line_errors(cocomix_run: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cocomix.errors import ConfigError
    from cocomix.eval.harness import CocomixLM

    tasks = _task_dir(tmp_path)
    for flag, value, *more in (("--batch-size", "0"), ("--limit", "-1"), ("--limit", str(2**63)),
                               ("--max-batch-size", "0", "--batch-size", "auto")):
        r = run_cli("eval", "--run", str(cocomix_run), "--tasks",
                    "shakespeare_mc", "--include-path", str(tasks), flag, value, *more)
        assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "expected" in r.stderr and ("'auto'" in r.stderr) == (flag == "--batch-size"), r.stderr  # no bound
    # --max-batch-size sets where 'auto' starts: with a fixed --batch-size it would do nothing
    r = run_cli("eval", "--run", str(cocomix_run), "--tasks", "shakespeare_mc", "--include-path", str(tasks),
                "--batch-size", "8", "--max-batch-size", "2")
    assert r.returncode == 2 and r.stderr.startswith("cocomix: error: --max-batch-size:"), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    r = run_cli("eval", "--run", str(cocomix_run), "--tasks", "shakespeare_mc", "--include-path", str(tasks),
                "--max-batch-size", "2", "--limit", "2")  # alone: --batch-size auto (a CPU takes 8, said once)
    assert r.returncode == 0 and "--max-batch-size" not in r.stderr, r.stderr
    lm = CocomixLM(cocomix_run)
    long = SimpleNamespace(args=("To be", " or not" * 80))  # a continuation longer than the 64-token context
    with pytest.raises(ConfigError, match="continuation is"):
        lm.loglikelihood([long])


def test_an_unknown_task_next_to_a_malformed_task_file_names_the_file(cocomix_run: Path, tmp_path: Path) -> None:
    tasks = _task_dir(tmp_path)
    (tasks / "mytask.yaml").write_text("task: mytask\ndataset_path: [json\n")  # an unclosed list
    (tasks / "fine.yaml").write_text("task: fine\nprocess_results: !function utils.process\n")  # lm-eval's tag
    r = run_cli("eval", "--run", str(cocomix_run), "--tasks", "mytask", "--include-path", str(tasks))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    line = r.stderr.strip()
    assert line.startswith("cocomix: error: --tasks: unknown task 'mytask' (")
    assert "mytask.yaml is not valid YAML" in line


def test_a_task_lm_eval_cannot_build_is_a_one_line_error_naming_the_cause(cocomix_run: Path,
                                                                          tmp_path: Path) -> None:
    """What lm-eval raises while it builds a local task (no model code runs then) is said in one line, exit 2."""
    tasks = _task_dir(tmp_path)
    original = (tasks / "shakespeare_mc.yaml").read_text()
    (tasks / "items_bad.jsonl").write_text('{"question": "a", "choices": ["b"], "answer": 0}\n{"question": \n')
    for edit, cause in (
            (("doc_to_text: \"{{question}}\"", "doc_to_text: !function utils_absent.text"), "ImportError"),
            (("output_type: multiple_choice", "output_type: multiple_choise"), "invalid output_type"),
            (("items.jsonl", "items_bad.jsonl"), "DatasetGenerationError")):
        (tasks / "shakespeare_mc.yaml").write_text(original.replace(*edit))
        r = run_cli("eval", "--run", str(cocomix_run), "--tasks", "shakespeare_mc", "--include-path", str(tasks),
                    "--limit", "2")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        line = r.stderr.strip().splitlines()[-1]  # (datasets may print its progress bar before it fails)
        assert line.startswith("cocomix: error: --tasks shakespeare_mc: lm-eval could not build the task "
                               f"(task files in --include-path {tasks}): ") and cause in line, r.stderr


def test_lm_evals_own_task_index_is_built_only_when_a_task_needs_it(tmp_path: Path) -> None:
    """Tasks all defined in --include-path: a manager of that folder alone (lm-eval's ~15,000 built-in task files
    take seconds to index); a built-in task, or a local group (it may list built-in tasks): the full index."""
    from lm_eval.tasks import TaskManager

    from cocomix.eval.tasks import _task_manager

    tasks = _task_dir(tmp_path)
    (tasks / "group.yaml").write_text("group: shakespeare_group\ntask:\n  - shakespeare_mc\n")
    built: list[bool] = []

    class Recording(TaskManager):
        def __init__(self, include_path: str | None = None, include_defaults: bool = True) -> None:
            built.append(include_defaults)
            if not include_defaults:  # the full index is not built here (~11 s): only which one was asked for
                super().__init__(include_path=include_path, include_defaults=False)

    local = _task_manager(Recording, ["shakespeare_mc"], tasks)
    assert built == [False] and "shakespeare_mc" in local.all_subtasks and "shakespeare_group" in local.all_groups
    for names in (["shakespeare_group"], ["shakespeare_mc", "hellaswag"]):
        built.clear()
        _task_manager(Recording, names, tasks)
        assert built == [False, True], names
    built.clear()
    _task_manager(Recording, ["hellaswag"], None)
    assert built == [True]


def _lm_evals_hf_scoring(lm: object, batch_size: int) -> object:
    """lm-eval's own HF model code (`HFLM._loglikelihood_tokens`, `loglikelihood_rolling`, `TemplateLM`'s
    context/continuation split) run on our model and tokenizer: the reference our adapter must equal."""
    from lm_eval.api.model import CacheHook
    from lm_eval.models.huggingface import HFLM

    class Reference(HFLM):
        eot_token_id = property(lambda self: self._eot)
        prefix_token_id = property(lambda self: self._eot)
        max_length = property(lambda self: self._max)
        batch_size = property(lambda self: self._bs)
        device = property(lambda self: self._dev)
        rank = property(lambda self: 0)
        world_size = property(lambda self: 1)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw: object) -> list[int]:
            return self._tok.encode(string)

        def _model_call(self, inps: torch.Tensor, attn_mask: object = None, labels: object = None) -> torch.Tensor:
            with torch.no_grad():
                return self._model(inps).logits

    ref = Reference.__new__(Reference)  # HFLM's __init__ loads a transformers model: bypassed
    ref._eot, ref._max, ref._bs, ref._dev, ref._tok, ref._model = (lm.eot, lm.max_length, batch_size, lm._device,
                                                                  lm.tok, lm.model)
    ref.backend, ref.logits_cache, ref.softmax_dtype, ref.cache_hook = "causal", True, torch.float32, CacheHook(None)
    ref.enable_thinking = False
    return ref


def test_scores_equal_lm_evals_hf_model_on_our_model(cocomix_run: Path) -> None:
    """Truncated requests (longer than the 32 tokens the run trained on), an empty context, an empty context whose
    continuation starts with the end-of-text token, trailing whitespace, batches of mixed lengths, and rolling
    windows: the same numbers and greedy flags as lm-eval's HF model, in request order."""
    from types import SimpleNamespace

    from cocomix.eval.harness import CocomixLM

    lm = CocomixLM(cocomix_run, batch_size=3)
    ref = _lm_evals_hf_scoring(lm, batch_size=3)
    long = "Now is the winter of our discontent made glorious summer by this sun of York; " * 4
    pairs = [("To be", " or not to be"), ("", "Now is the winter"), ("", lm.tok.eos_token + " To be"),
             (long, " and all the clouds"), ("KING RICHARD:\n\n", "Now is"), ("A", " horse"),
             (long[:90], " that lour'd upon our house"), ("To be, or not", " to be")]
    requests = [SimpleNamespace(args=p) for p in pairs]
    with pytest.warns(UserWarning, match="scored on its last tokens"):
        ours = lm.loglikelihood(requests)
    theirs = ref.loglikelihood(requests, disable_tqdm=True)
    assert len(lm.encode(long)) > lm.max_length  # the truncation path is exercised
    for (a, greedy_a), (b, greedy_b), pair in zip(ours, theirs, requests, strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)) and greedy_a == greedy_b, (pair.args, a, b)
    texts = [SimpleNamespace(args=(t,)) for t in (long * 2, "A", "To be, or not to be", "")]
    for a, b in zip(lm.loglikelihood_rolling(texts), ref.loglikelihood_rolling(texts, disable_tqdm=True),
                    strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)


def test_the_scored_length_is_what_the_run_trained_on_unless_asked(cocomix_run: Path) -> None:
    """The run was trained on 32-token windows of a 64-position model: lm-eval scores at most 32 tokens a
    forward (positions 32 to 63 never trained), as `cocomix eval`'s validation loss reads 32-token windows;
    max_length (eval --seq-len) asks for more, up to the model's context_length."""
    from types import SimpleNamespace

    from cocomix.eval.harness import CocomixLM

    text = [SimpleNamespace(args=("Now is the winter of our discontent made glorious summer by this sun " * 3,))]
    lm, wide = CocomixLM(cocomix_run), CocomixLM(cocomix_run, max_length="64")
    assert (lm.max_length, wide.max_length, lm.model.cfg.context_length) == (32, 64, 64)
    assert len(lm.encode(text[0].args[0])) > 64
    assert lm.loglikelihood_rolling(text) == CocomixLM(cocomix_run, max_length=32).loglikelihood_rolling(text)
    assert lm.loglikelihood_rolling(text) != wide.loglikelihood_rolling(text)
    for bad in (0, 65, "auto", True, 2.5):
        with pytest.raises(ConfigError, match=r"max_length \(eval --seq-len\): expected an integer from 1 to the "
                                              r"model's context_length 64"):
            CocomixLM(cocomix_run, max_length=bad)


def test_adapter_arguments_are_checked_and_limit_zero_means_every_example(cocomix_run: Path,
                                                                          tmp_path: Path) -> None:
    from cocomix.eval.harness import CocomixLM
    from cocomix.eval.tasks import run_tasks

    for kwargs, field in (({"dtype": "float16"}, "--dtype"), ({"batch_size": 0}, "--batch-size"),
                          ({"batch_size": "most"}, "--batch-size"), ({"batch_size": "auto:x"}, "--batch-size"),
                          ({"max_batch_size": "auto"}, "max_batch_size"), ({"device": "gpu"}, "--device")):
        with pytest.raises(ConfigError, match=field):
            CocomixLM(cocomix_run, **kwargs)
    # through lm-eval's model_args the user names the field, not the flag of `cocomix eval`: both are said
    for kwargs, named in (({"dtype": "float16"}, "dtype (eval --dtype)"), ({"batch_size": 0}, "batch_size (eval"),
                          ({"max_batch_size": 0}, "max_batch_size (eval"), ({"device": "gpu"}, "device (eval")):
        with pytest.raises(ConfigError, match=re.escape(named)):
            CocomixLM.create_from_arg_string(f"run={cocomix_run}," + ",".join(f"{k}={v}" for k, v in kwargs.items()))
    res = run_tasks(cocomix_run, ["shakespeare_mc"], include_path=_task_dir(tmp_path), limit=0, log_samples=True)
    assert len(res["samples"]["shakespeare_mc"]) == 24


def test_auto_batch_size_halves_until_a_batch_fits_and_is_fixed_on_a_cpu(cocomix_run: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's `--batch_size auto` / `auto:N`: on a GPU the largest of max_batch_size, /2, … whose full-context
    scoring forward does not run out of memory; on a CPU (no such signal) the fixed CPU default, said once."""
    import torch

    from cocomix.eval.batch_size import CPU_AUTO, largest_fitting, parse_batch_size
    from cocomix.eval.harness import CocomixLM

    assert [parse_batch_size(v) for v in ("auto", "auto:4", "auto:1.5", "12", 3)] == ["auto", "auto", "auto", 12, 3]
    tried: list[int] = []

    def fits_up_to(limit: int, error: BaseException) -> object:
        def probe(rows: int) -> None:
            tried.append(rows)
            if rows > limit:
                raise error
        return probe

    assert largest_fitting(fits_up_to(20, torch.OutOfMemoryError("CUDA out of memory")), 64) == 16
    assert tried == [64, 32, 16]
    assert largest_fitting(fits_up_to(0, RuntimeError("CUDA error: out of memory")), 8) == 1  # 1 is not tried
    with pytest.raises(ValueError, match="other"):  # any other error is the real one
        largest_fitting(fits_up_to(0, ValueError("other")), 8)
    lm = CocomixLM(cocomix_run, batch_size="auto:2", max_batch_size=32)
    with pytest.warns(UserWarning, match=f"--batch-size auto on cpu: {CPU_AUTO}"):
        assert lm.batch_size == CPU_AUTO
    lm = CocomixLM(cocomix_run, batch_size="auto", max_batch_size=2)  # the user's bound holds on a CPU too
    with pytest.warns(UserWarning, match="--batch-size auto on cpu: 2 "):
        assert lm.batch_size == 2
    # the detection a GPU runs: real scoring forwards of the full context, halving from max_batch_size
    lm = CocomixLM(cocomix_run, batch_size="auto", max_batch_size=32)
    real, probed = lm._probe, []

    def probe(rows: int) -> None:
        probed.append(rows)
        real(rows)
        if rows > 5:
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(lm, "_probe", probe)
    monkeypatch.setattr(lm, "_device", torch.device("cuda"))  # (only the branch; the probe runs on the CPU)
    assert lm.batch_size == 4 and probed == [32, 16, 8, 4] and lm.batch_size == 4 and len(probed) == 4


def test_lm_eval_finds_the_adapter_by_its_model_name(cocomix_run: Path, tmp_path: Path) -> None:
    """`cocomix` is lm-eval's model name: registered on import (simple_evaluate(model="cocomix")) and declared as
    an `lm_eval.models` entry point of the installed package (what lm-eval's plugin discovery reads); lm-eval's
    own settings (a string batch size, max_batch_size) are accepted, a wrong model argument is one line."""
    import importlib.metadata
    import tomllib

    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from cocomix.eval.harness import CocomixLM
    from cocomix.eval.tasks import run_tasks

    assert get_model("cocomix") is CocomixLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own names still resolve
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert declared["project"]["entry-points"]["lm_eval.models"] == {"cocomix": "cocomix.eval.harness:CocomixLM"}
    installed = {ep.name: ep for ep in importlib.metadata.entry_points(group="lm_eval.models")}
    assert installed["cocomix"].load() is CocomixLM  # the package as `make install` installs it

    tasks = _task_dir(tmp_path)
    by_name = simple_evaluate(model="cocomix", model_args=f"run={cocomix_run},dtype=float32", tasks=["shakespeare_mc"],
                              batch_size="4", max_batch_size=64,
                              task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    ours = run_tasks(cocomix_run, ["shakespeare_mc"], include_path=tasks)
    assert by_name["results"]["shakespeare_mc"] == ours["results"]["shakespeare_mc"]
    made = CocomixLM.create_from_arg_obj({"run": str(cocomix_run), "data": None}, {"batch_size": "2", "device": None,
                                                                                   "max_batch_size": 8, "new": 1})
    assert made.batch_size == 2 and made.run_cfg.data.path  # data=None is the run's store; lm-eval's extras ignored
    import importlib

    import cocomix.eval.harness as harness

    importlib.reload(harness)  # a second import of the module (e.g. by a plugin loader) registers nothing twice
    assert get_model("cocomix").__qualname__ == "CocomixLM"
    for args, needle in (("pretrained=gpt2", "unknown argument 'pretrained'"), ("dtype=float32", "no run"),
                         (f"run={cocomix_run},dtype=float16", "--dtype")):
        with pytest.raises(ConfigError, match=needle):
            CocomixLM.create_from_arg_string(args, {"batch_size": 1, "max_batch_size": None, "device": None})


def test_torchrun_with_an_lm_eval_that_predates_model_collectives_is_a_one_line_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval < 0.4.12 gathers through `lm.accelerator`, which our adapter does not have: refused up front under
    torchrun, accepted in one process and from 0.4.12 on."""
    import importlib.metadata

    from cocomix.eval import tasks

    installed = {"v": "0.4.11"}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed["v"])
    tasks.check_harness_version()  # one process: any version
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"^--tasks under torchrun: lm-eval 0\.4\.11 is installed; data-parallel "
                                          r"evaluation needs lm-eval>=0\.4\.12"):
        tasks.check_harness_version()
    for ok in ("0.4.12", "0.4.13.dev0", "0.5.0"):
        installed["v"] = ok
        tasks.check_harness_version()
