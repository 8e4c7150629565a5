"""`cocomix compare`: seed grouping, mean ± std, token efficiency against a hand computation, readable plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cocomix.config import RunConfig, TrainConfig
from cocomix.errors import CocomixError
from cocomix.eval.compare import compare, group_runs, token_efficiency, tokens_to_reach


def _run(root: Path, name: str, method: str, seed: int, losses: list[float], flops_per_token: float,
         steps: list[int] | None = None, planned: int = 1000, **train: object) -> Path:
    """A run directory with config.json and metrics.jsonl as `cocomix train` writes them (eval every 100 steps,
    or at `steps`; `planned`: its train.steps)."""
    path = root / name
    path.mkdir()
    run = RunConfig(method=method, train=TrainConfig(seed=seed, micro_batch_size=4, steps=planned, **train))
    (path / "config.json").write_text(run.to_json())
    tokens_per_step = 4 * run.data.seq_len  # 1024
    events = [{"kind": "flops", "step": 0, "flops_per_token_total": flops_per_token}]
    for i, loss in enumerate(losses, start=1):
        step = steps[i - 1] if steps else 100 * i
        events.append({"kind": "train", "step": step, "loss": loss + 0.1, "train_s": 2.0 * step})
        events.append({"kind": "eval", "step": step, "val_loss": loss, "tokens": step * tokens_per_step,
                       "flops": step * tokens_per_step * flops_per_token, "train_s": 2.0 * step})
    (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"kind": "tr')
    return path


def test_token_efficiency_matches_a_hand_computation(tmp_path: Path) -> None:
    ntp = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.5, 4.2, 4.0], 1e6)
    coco = _run(tmp_path, "cocomix", "cocomix", 0, [4.8, 4.3, 4.05, 3.9], 3e6)
    groups = group_runs([ntp, coco])
    # Hand: NTP's final loss 4.0 at 400 steps = 409,600 tokens. CoCoMix's curve crosses 4.0 between step 300
    # (4.05, 307,200 tokens) and step 400 (3.9, 409,600 tokens): 307,200 + 102,400 · (4.05 − 4.0) / (4.05 − 3.9)
    # = 341,333.3 tokens, so CoCoMix needs 1 − 341,333.3 / 409,600 = 16.67% fewer tokens.
    assert token_efficiency(groups[1], groups[0]) == pytest.approx(1 - 341333.333 / 409600, rel=1e-6)
    assert token_efficiency(groups[0], groups[1]) is None  # NTP never reaches CoCoMix's 3.9
    assert tokens_to_reach([1.0, 2.0], [3.0, 2.0], 3.5) == 1.0


def test_seeds_are_grouped_with_mean_and_sample_std(tmp_path: Path) -> None:
    runs = [_run(tmp_path, f"ntp-seed{s}", "ntp", s, [5.0, 4.0 + 0.1 * s], 1e6) for s in range(3)]
    runs.append(_run(tmp_path, "cocomix-seed0", "cocomix", 0, [4.9, 3.9], 2e6))
    res = compare(runs, tmp_path / "out")
    groups = res["groups"]
    assert [g.label for g in groups] == ["ntp", "cocomix"] and len(groups[0].runs) == 3
    mean, std = groups[0].final()
    assert mean == pytest.approx(4.1) and std == pytest.approx(0.1)
    assert "4.1000 ± 0.1000" in res["table"] and "| cocomix | cocomix | 1 | 3.9000 |" in res["table"]
    # perplexity = exp(mean loss): e^4.1 = 60.34, e^3.9 = 49.40; per run 200 steps × 1024 tokens in 400 s: 512/s
    assert "| ntp | ntp | 3 | 4.1000 ± 0.1000 | 60.34 | 204.80k | 204.80G | 400 s | 512 | — |" in res["table"]
    assert "| cocomix | cocomix | 1 | 3.9000 | 49.40 | 204.80k | 409.60G | 400 s | 512 | +10.0% |" in res["table"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "loss_vs_tokens.png" in md and "loss_vs_flops.png" in md


def test_a_short_s_suffix_groups_only_when_it_is_the_runs_seed() -> None:
    from cocomix.eval.compare import group_label

    assert group_label("ntp-seed3", 3) == "ntp" and group_label("ntp_seed7", 0) == "ntp"
    assert group_label("ntp-s2", 2) == "ntp" and group_label("ntp_s0", 0) == "ntp"
    assert group_label("ctx-s512", 0) == "ctx-s512"  # a context length, not a seed: the name stays
    assert group_label("ntp", 0) == "ntp" and group_label("ntp-seedx", 0) == "ntp-seedx"


def test_plots_have_labelled_axes_and_a_legend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    seen = {}
    real_legend = matplotlib.axes.Axes.legend

    def spy(self, *args, **kwargs):
        seen.setdefault(self.get_title(), (self.get_xlabel(), self.get_ylabel(),
                                          [t.get_label() for t in self.get_lines()]))
        return real_legend(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", spy)
    runs = [_run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6), _run(tmp_path, "kd", "kd", 0, [4.9, 3.95], 2e6)]
    res = compare(runs, tmp_path / "out")
    for png in res["files"][1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert set(seen) == {"Validation loss vs tokens", "Validation loss vs training FLOPs"}
    for xlabel, ylabel, lines in seen.values():
        assert xlabel.startswith("training") and ylabel == "validation loss (nats/token)" and lines == ["ntp", "kd"]


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CocomixError, match="missing: a missing folder, not a run; give a run directory"):
        compare([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CocomixError, match="empty: not a finished cocomix run"):
        compare([tmp_path / "empty"], tmp_path / "out")
    run = _run(tmp_path, "ntp", "ntp", 0, [5.0], 1e6)
    ckpt = run / "checkpoints" / "step_0000001"  # a run's checkpoint: the run it belongs to is named
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    with pytest.raises(CocomixError, match=rf"step_0000001: holds a checkpoint, not a run; give a run directory "
                                           rf"\({re.escape(str(run))}\)"):
        compare([ckpt], tmp_path / "out")
    with pytest.raises(CocomixError, match="--reference"):
        compare([run], tmp_path / "out", reference="nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(CocomixError, match="--out"):
        compare([run], tmp_path / "file")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"method": "ntp"}')
    (broken / "metrics.jsonl").write_text("")
    with pytest.raises(CocomixError, match="not a cocomix run config"):
        compare([broken], tmp_path / "out")
    config = json.loads((run / "config.json").read_text())
    for value in (0, -2, 1.5):  # a hand-edited window length: named, not a ZeroDivisionError or "-216 windows"
        (run / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "seq_len": value}}))
        with pytest.raises(CocomixError, match=rf"config.json: data.seq_len is {value}, expected a positive integer"):
            compare([run], tmp_path / "out")


def test_runs_that_are_not_seeds_of_one_run_are_not_grouped(tmp_path: Path) -> None:
    """Same directory name in two experiments (or one run twice, or two methods) is refused, not averaged."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _run(tmp_path / "a", "ntp", "ntp", 0, [5.0, 4.0], 1e6)
    b = _run(tmp_path / "b", "ntp", "ntp", 0, [5.0, 3.0], 1e6)
    c = _run(tmp_path / "b", "ntp-seed1", "cocomix", 1, [5.0, 3.0], 1e6)
    d = _run(tmp_path / "b", "ntp-seed2", "ntp", 2, [5.0, 3.0], 1e6, lr=9e-3)  # another experiment's lr
    for runs, why in (([a, b], "both seed 0"), ([a, a], "ntp is given twice .*; give each run once"),
                      ([a, c], "methods ntp and cocomix"), ([a, d], r"train\.lr 0\.0006 vs 0\.009")):
        with pytest.raises(CocomixError, match=why):
            group_runs(runs)
    e = _run(tmp_path / "b", "ntp-seed3", "ntp", 3, [5.0, 3.0], 1e6, eval_every=50, grad_accum=2)
    assert len(group_runs([a, e])[0].runs) == 2  # evaluation schedule and batch split shape no result
    f = _run(tmp_path / "b", "ntp-seed4", "ntp", 4, [5.0, 3.0], 1e6, eval_batches=3)
    with pytest.raises(CocomixError, match=r"train\.eval_batches"):  # a loss measured on other windows
        group_runs([a, f])
    h0 = _run(tmp_path / "b", "fsdp", "ntp", 0, [5.0, 3.0], 1e6, parallel="fsdp")
    h1 = _run(tmp_path / "b", "fsdp-seed1", "ntp", 1, [5.0, 3.0], 1e6, parallel="fsdp", fsdp_param_dtype="bfloat16")
    with pytest.raises(CocomixError, match=r"train\.fsdp_param_dtype"):  # bf16 compute: another precision
        group_runs([h0, h1])
    old = json.loads((a / "config.json").read_text())
    del old["train"]["chunked_lm_loss"]  # written by an older cocomix: the default is filled in
    g = _run(tmp_path / "b", "ntp-seed5", "ntp", 5, [5.0, 3.0], 1e6)
    (g / "config.json").write_text(json.dumps({**old, "train": {**old["train"], "seed": 5}}))
    assert len(group_runs([a, g])[0].runs) == 2

    def seed_with(base: Path, name: str, seed: int, **concept: object) -> Path:
        """A seed of `base` whose config differs in `concept.*` settings."""
        cfg = json.loads((base / "config.json").read_text())
        run = _run(tmp_path / "b", name, cfg["method"], seed, [5.0, 3.0], 1e6)
        (run / "config.json").write_text(json.dumps({**cfg, "train": {**cfg["train"], "seed": seed},
                                                     "concept": {**cfg["concept"], **concept}}))
        return run

    # concept.* settings a method does not read cannot make its seeds differ; those it reads do
    assert len(group_runs([a, seed_with(a, "ntp-seed6", 6, k_attr=2, teacher="other")])[0].runs) == 2
    p0 = _run(tmp_path / "b", "pause", "pause", 0, [5.0, 3.0], 1e6)
    assert len(group_runs([p0, seed_with(p0, "pause-seed1", 1, k_attr=2)])[0].runs) == 2
    with pytest.raises(CocomixError, match=r"concept\.concept_layer"):
        group_runs([p0, seed_with(p0, "pause-seed2", 2, concept_layer=2)])
    for kd in ("kd", "kd-pause"):  # the teacher and λ_KD shape a KD run; the concept targets' settings do not
        k0 = _run(tmp_path / "b", kd, kd, 0, [5.0, 3.0], 1e6)
        assert len(group_runs([k0, seed_with(k0, f"{kd}-seed1", 1, k_attr=2, mix_k=4, cache="t")])[0].runs) == 2
        with pytest.raises(CocomixError, match=r"concept\.lambda_kd"):
            group_runs([k0, seed_with(k0, f"{kd}-seed2", 2, lambda_kd=0.5)])
    with pytest.raises(CocomixError, match=r"concept\.concept_layer"):  # KD+Pause's slot is where Pause's is
        group_runs([k0, seed_with(k0, "kd-pause-seed3", 3, concept_layer=2)])
    m0 = _run(tmp_path / "b", "mix", "cocomix", 0, [5.0, 3.0], 1e6)
    with pytest.raises(CocomixError, match=r"concept\.k_attr"):
        group_runs([m0, seed_with(m0, "mix-seed1", 1, k_attr=2)])
    # CoCoMix reads every concept setting but λ_KD and the pause slot's form
    assert len(group_runs([m0, seed_with(m0, "mix-seed2", 2, lambda_kd=0.5, pause_slot="token")])[0].runs) == 2


def test_seeds_are_lined_up_by_step_and_non_finite_losses_left_out(tmp_path: Path) -> None:
    """A seed evaluated at other steps (its eval_every changed on a resume) is compared at the steps both have,
    never its i-th evaluation against another's; a NaN evaluation is dropped and said."""
    a = _run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.6, 4.45, 4.3], 1e6, steps=[200, 400, 600, 800])
    b = _run(tmp_path, "ntp-seed1", "ntp", 1, [5.0, 4.6, 4.5, 4.4, 4.35, 4.3], 1e6,
             steps=[200, 400, 500, 600, 700, 800])
    (ntp,) = group_runs([a, b])
    assert ntp.steps() == [200, 400, 600, 800] and ntp.final() == pytest.approx((4.3, 0.0))
    xs, means, _ = ntp.mean_curve("tokens")
    assert xs == [200 * 1024, 400 * 1024, 600 * 1024, 800 * 1024] and means[2] == pytest.approx((4.45 + 4.4) / 2)
    c = _run(tmp_path, "kd", "kd", 0, [5.0, float("nan"), 4.2], 1e6)
    res = compare([a, b, c], tmp_path / "out")
    assert "kd: 1 evaluation(s) with a non-finite validation loss left out." in res["table"]
    kd_row = next(line for line in res["table"].splitlines() if line.startswith("| kd |"))
    assert "| 4.2000 |" in kd_row and "nan" not in kd_row


def test_cached_targets_are_charged_as_if_computed_online(tmp_path: Path) -> None:
    run = _run(tmp_path, "cocomix", "cocomix", 0, [5.0, 4.0], 2e6)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    event = json.loads(lines[0])
    event["flops_per_token_cached_targets"] = 3e6
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(event), *lines[1:]]))
    (group,) = group_runs([run])
    assert group.runs[0].flops[-1] == pytest.approx(200 * 1024 * (2e6 + 3e6))


def test_a_seed_cut_short_is_compared_at_the_last_shared_point(tmp_path: Path) -> None:
    """Seeds with different evaluation counts: the final loss and the token efficiency both use the last point
    every seed has, never one seed's later point against the others' token count."""
    runs = [_run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.5, 4.2, 4.0], 1e6),
            _run(tmp_path, "ntp-seed1", "ntp", 1, [5.0, 4.5, 4.2], 1e6),  # stopped after step 300
            _run(tmp_path, "cocomix-seed0", "cocomix", 0, [4.8, 4.3, 4.05, 3.9], 3e6)]
    ntp, coco = group_runs(runs)
    assert ntp.final() == pytest.approx((4.2, 0.0))
    # CoCoMix reaches 4.2 between step 200 (4.3) and 300 (4.05): 204,800 + 102,400 · 0.1 / 0.25 tokens, against
    # NTP's 307,200 at its last shared point
    assert token_efficiency(coco, ntp) == pytest.approx(1 - (204800 + 102400 * 0.4) / 307200, rel=1e-6)


def test_a_seed_cut_short_is_compared_at_the_shared_evaluation_and_a_bound_is_marked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens and FLOPs come from the evaluation the loss is read at (not each seed's own last one), the cut is
    said, and an efficiency whose first evaluation already beats the reference is shown as a lower bound."""
    runs = [_run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.5, 4.2, 4.0], 1e6),
            _run(tmp_path, "ntp-seed1", "ntp", 1, [5.1, 4.6], 1e6)]  # stopped after 2 evaluations
    runs.append(_run(tmp_path, "cocomix-seed0", "cocomix", 0, [4.4, 4.0], 3e6))
    res = compare(runs, tmp_path / "out", reference="ntp")
    ntp_row = next(line for line in res["table"].splitlines() if line.startswith("| ntp |"))
    # the loss at evaluation 2 (mean 4.55, 204,800 tokens = 204.80k), its FLOPs 204,800 · 1e6 = 204.80G
    assert "4.5500 ± 0.0707" in ntp_row and "| 204.80k |" in ntp_row and "| 204.80G |" in ntp_row, ntp_row
    assert "ntp: its seeds were evaluated at different steps (4 / 2 evaluations); compared at the 2 steps they " \
        "share, up to step 200." in res["table"]
    assert "| 400 s |" in ntp_row  # the wall-clock at step 200 (2 s a step), not seed 0's 800 s at step 400
    coco_row = next(line for line in res["table"].splitlines() if line.startswith("| cocomix |"))
    # CoCoMix's first evaluation (4.4, 102,400 tokens) is already below NTP's 4.55: needs at most half the tokens
    assert "| ≥ +50.0% |" in coco_row, coco_row
    assert "≥: the run's first evaluation already reached" in res["table"]
    # the reference may be given as one of its runs' paths: the same table
    assert compare(runs, tmp_path / "out2", reference=str(runs[1]))["table"] == res["table"]
    monkeypatch.setenv("HOME", str(tmp_path))  # and from the home folder, as `--reference=~/…` reaches it
    assert compare(runs, tmp_path / "out3", reference=f"~/{runs[1].name}")["table"] == res["table"]


def test_a_malformed_metrics_event_names_metrics_jsonl(tmp_path: Path) -> None:
    run = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["[1, 2, 3]", *lines[:-1]]) + "\n")  # a non-object line: skipped
    assert group_runs([run])[0].final()[0] == 4.0
    (run / "metrics.jsonl").write_text("\n".join([*lines[:-1], '{"kind": "eval", "step": 300, "val_loss": "abc"}'])
                                       + "\n")
    with pytest.raises(CocomixError, match=r"metrics\.jsonl: a malformed event \(ValueError"):
        group_runs([run])


def test_seeds_of_another_global_batch_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.0], 1e6)
    b = _run(tmp_path, "ntp-seed1", "ntp", 1, [5.0, 4.1], 1e6)
    lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()[:-1]]
    for e in lines:  # twice the windows per step (e.g. twice the processes: config.json does not record them)
        if "tokens" in e:
            e["tokens"] *= 2
    (b / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    with pytest.raises(CocomixError, match="102400 vs 204800 training tokens at step 100: another global batch"):
        group_runs([a, b])


def test_diverged_unfinished_and_differently_measured_runs_are_said(tmp_path: Path) -> None:
    ntp = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.5, 4.2, 4.0], 1e6, planned=400)
    coco = _run(tmp_path, "coco", "cocomix", 0, [4.8, 4.3, 3.9, float("nan")], 3e6, planned=400)
    short = _run(tmp_path, "kd", "kd", 0, [4.9, 4.4], 2e6, planned=400, eval_batches=5)
    res = compare([ntp, coco, short], tmp_path / "out", reference="ntp")
    assert ("coco: DIVERGED — coco's last evaluation (step 400) is non-finite; its row is read at step 300"
            in res["table"]), res["table"]
    assert "kd: unfinished — kd last evaluated at step 200 of 400." in res["table"]
    assert "kd: validation measured otherwise than ntp's (validation windows 20 vs 80)" in res["table"]
    assert "ntp: unfinished" not in res["table"] and "coco: validation measured" not in res["table"]


def test_edge_cases_of_the_logs_give_figures_or_one_line_errors(tmp_path: Path) -> None:
    ref = _run(tmp_path, "ntp", "ntp", 0, [5.0], 1e6, steps=[0])  # evaluated before any step: no efficiency
    other = _run(tmp_path, "kd", "kd", 0, [4.0], 1e6, steps=[100])
    lines = [json.loads(x) for x in (other / "metrics.jsonl").read_text().splitlines()[:-1]]
    (other / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in e.items() if k != "train_s"}) + "\n"
                                                 for e in lines))  # a log that records no wall-clock
    res = compare([ref, other], tmp_path / "out", reference="ntp")
    kd_row = next(line for line in res["table"].splitlines() if line.startswith("| kd |"))
    assert kd_row.endswith("| n/a | n/a | not reached |"), kd_row
    (other / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": "x" * 5000, "val_loss": 4.0}) + "\n")
    with pytest.raises(CocomixError, match="step is 'xxx") as e:
        group_runs([other])
    assert len(str(e.value)) < 300


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path: Path) -> None:
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        compare([_run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)], tmp_path / "out")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def _with_store(path: Path, data_path: str, store: dict) -> Path:
    """The run at `path` with data.path `data_path` and a step-200 checkpoint recording `store` (its identity)."""
    config = json.loads((path / "config.json").read_text())
    config["data"]["path"] = data_path
    (path / "config.json").write_text(json.dumps(config))
    ckpt = path / "checkpoints" / "step_0000200"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 200, "store": store}))
    (path / "checkpoints" / "latest").write_text("step_0000200\n")
    return path


def test_a_moved_store_is_the_same_validation_split_and_another_store_is_not(tmp_path: Path) -> None:
    """The note compares the validation split a run's checkpoint recorded (size and sampled digest), not the
    store's path: a moved store (resume allows it) is no note, a re-prepared store is."""
    def with_store(path: Path, data_path: str, digest: str) -> Path:
        return _with_store(path, data_path, {"val_tokens": 50_000, "val_sampled_sha256": digest})

    ntp = with_store(_run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6, planned=200), "data/x", "ab" * 32)
    moved = with_store(_run(tmp_path, "kd", "kd", 0, [4.9, 3.9], 1e6, planned=200), "/scratch/x", "ab" * 32)
    other = with_store(_run(tmp_path, "pause", "pause", 0, [4.9, 3.9], 1e6, planned=200), "data/x", "cd" * 32)
    table = compare([ntp, moved, other], tmp_path / "out", reference="ntp")["table"]
    assert "kd: validation measured" not in table
    assert "pause: validation measured otherwise than ntp's (validation split '50000 tokens, cdcdcdcdcdcd' vs " \
        "'50000 tokens, abababababab')" in table, table


def test_seeds_trained_on_another_store_are_refused_and_on_a_moved_copy_grouped(tmp_path: Path) -> None:
    """Seeds of one run train on one token store, as their checkpoints recorded it by content (train split size,
    sampled digest, tokenizer): a copy at another path groups, a store of other text is refused, not averaged."""
    def with_store(path: Path, data_path: str, train_digest: str) -> Path:
        return _with_store(path, data_path, {"val_tokens": 50_000, "val_sampled_sha256": "ab" * 32,
                                             "train_tokens": 900_000, "train_sampled_sha256": train_digest,
                                             "tokenizer_sha256": "ef" * 32})

    a = with_store(_run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.0], 1e6, planned=200), "data/x", "11" * 32)
    b = with_store(_run(tmp_path, "ntp-seed1", "ntp", 1, [5.1, 4.1], 1e6, planned=200), "/scratch/x", "11" * 32)
    assert [len(g.runs) for g in group_runs([a, b])] == [2]
    (tmp_path / "other").mkdir()
    c = with_store(_run(tmp_path / "other", "ntp-seed2", "ntp", 2, [5.1, 4.1], 1e6, planned=200), "data/y",
                   "22" * 32)
    with pytest.raises(CocomixError, match=r"would be seeds of one group 'ntp' \(token store \(train split\) "
                                           r"'900000 tokens, 111111111111, tokenizer efefefefefef' vs '900000 tokens, "
                                           r"222222222222"):
        group_runs([a, c])
    (tmp_path / "old").mkdir()  # a seed whose checkpoint predates the record: not compared on it
    old = _run(tmp_path / "old", "ntp-seed3", "ntp", 3, [5.1, 4.1], 1e6, planned=200)
    assert [len(g.runs) for g in group_runs([a, old])] == [2]


def test_whole_split_runs_are_alike_when_one_has_no_checkpoint_record(tmp_path: Path) -> None:
    """Two runs evaluated on their whole split (eval_batches 0), one with its checkpoint's record of the split's
    size and one without (its checkpoints removed): no note; against 5 global batches, one."""
    ntp = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6, planned=200, eval_batches=0)
    ckpt = ntp / "checkpoints" / "step_0000200"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 200, "store": {"val_tokens": 50_000,
                                                                         "val_sampled_sha256": "ab" * 32}}))
    (ntp / "checkpoints" / "latest").write_text("step_0000200\n")
    bare = _run(tmp_path, "kd", "kd", 0, [4.9, 3.9], 1e6, planned=200, eval_batches=0)
    part = _run(tmp_path, "pause", "pause", 0, [4.9, 3.9], 1e6, planned=200, eval_batches=5)
    table = compare([ntp, bare, part], tmp_path / "out", reference="ntp")["table"]
    assert "kd: validation measured" not in table
    assert "pause: validation measured otherwise than ntp's (validation windows 20 vs 195)" in table, table
    table = compare([bare, part], tmp_path / "out2", reference="kd")["table"]  # all of an unknown split vs 20
    assert "pause: validation measured otherwise than kd's (validation windows 20 vs 'all')" in table, table


def test_plot_labels_are_shown_as_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run names are legend labels as they are: a leading `_` (which matplotlib hides) and `$` pairs (mathtext,
    which a backslash can make unparsable) are plain text."""
    import matplotlib.axes

    runs = [_run(tmp_path, "_base", "ntp", 0, [5.0, 4.0], 1e6), _run(tmp_path, "a$\\x$b", "kd", 0, [4.9, 3.9], 1e6)]
    seen: list[list[str]] = []
    legend = matplotlib.axes.Axes.legend

    def record(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(self.get_legend_handles_labels()[1])
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", record)
    compare(runs, tmp_path / "out")
    assert len(seen) == 2 and all(labels == ["\u200b_base", "a\\$\\x\\$b"] for labels in seen), seen
    assert (tmp_path / "out" / "loss_vs_tokens.png").stat().st_size > 0


def test_a_run_folder_renamed_to_a_non_utf8_name_is_shown_escaped(tmp_path: Path) -> None:
    """cocomix refuses to create such a folder, but one renamed by hand is compared, its name as `\\xNN`."""
    import os

    ntp = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)
    coco = _run(tmp_path, "cocomix", "cocomix", 0, [4.9, 3.9], 2e6)
    renamed = tmp_path / os.fsdecode(b"coco\xffmix")
    coco.rename(renamed)
    res = compare([ntp, renamed], tmp_path / "out")
    assert [g.label for g in res["groups"]] == ["ntp", "coco\\xffmix"]
    md = (tmp_path / "out" / "compare.md").read_text(encoding="utf-8")
    assert "| coco\\xffmix | cocomix |" in md and "coco\\xffmix last evaluated at step 200" in md
    assert (tmp_path / "out" / "loss_vs_tokens.png").stat().st_size > 1000


def test_a_run_without_a_finite_validation_loss_is_refused_with_the_reason(tmp_path: Path) -> None:
    ntp = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)
    early = _run(tmp_path, "early", "ntp", 1, [], 1e6)  # stopped at step 11, before its first evaluation
    with open(early / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"kind": "train", "step": 11, "loss": 6.0}) + "\n")
    with pytest.raises(CocomixError, match="no validation loss yet: the log ends at step 11, before the run's first "
                                           "evaluation"):
        compare([ntp, early], tmp_path / "out")
    gone = _run(tmp_path, "gone", "ntp", 2, [float("nan"), float("inf")], 1e6)
    with pytest.raises(CocomixError, match="every validation loss is non-finite"):
        compare([ntp, gone], tmp_path / "out2")


def test_a_first_evaluation_equal_to_the_reference_final_loss_is_a_bound(tmp_path: Path) -> None:
    """Reaching the reference's final loss exactly at the first evaluation already makes the efficiency a lower
    bound (the loss may have been reached earlier); just above it, it is not."""
    from cocomix.eval.compare import efficiency_is_bound

    ref = _run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)
    equal = _run(tmp_path, "equal", "cocomix", 0, [4.0, 3.5], 1e6)
    above = _run(tmp_path, "above", "cocomix", 1, [4.0001, 3.5], 1e6)
    (ntp, at, over) = group_runs([ref, equal, above])
    assert efficiency_is_bound(at, ntp) and not efficiency_is_bound(over, ntp)


def test_rerunning_compare_into_its_own_output_says_it_is_replaced(tmp_path: Path) -> None:
    from tests.cli import run_cli

    runs = [str(_run(tmp_path, "ntp", "ntp", 0, [5.0, 4.0], 1e6)), str(_run(tmp_path, "coco", "cocomix", 0,
                                                                              [4.9, 3.9], 2e6))]
    first = run_cli("compare", *runs, "--out", str(tmp_path / "cmp"))
    assert first.returncode == 0, first.stderr
    assert "will replace it" not in first.stderr
    again = run_cli("compare", *runs, "--out", str(tmp_path / "cmp"))
    note = f"--out {tmp_path / 'cmp'} holds a run comparison (compare); this run will replace it"
    assert again.returncode == 0 and note in again.stderr
    bad = run_cli("compare", *runs, "--out", str(tmp_path / "cmp"), "--reference", "nope")
    assert bad.returncode == 2 and "will replace it" not in bad.stderr  # an argument error: nothing replaced
    assert bad.stderr.strip().startswith("cocomix: error: --reference: 'nope'") and bad.stderr.count("\n") == 1


def test_a_short_run_wall_clock_keeps_a_tenth(tmp_path: Path) -> None:
    """Under 10 s the table keeps a tenth of a second (a 0.4 s run is not "0 s"); whole seconds above."""
    short = _run(tmp_path, "short", "ntp", 0, [5.0, 4.9], 1e6, steps=[1, 2])  # train_s 2 s per step: 4.0 s
    longer = _run(tmp_path, "longer", "cocomix", 0, [5.1, 4.8], 1e6, steps=[3, 6])  # 12 s
    table = compare([short, longer], tmp_path / "out")["table"]
    assert "| 4.0 s |" in table and "| 12 s |" in table, table


def test_a_compare_that_fails_leaves_no_output_folder_and_skips_a_line_nested_too_deep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeds without a shared evaluation step are refused before `--out` (and the folders above it) are made; a
    plot that fails takes the folders it made with it; a metrics.jsonl line nested past the JSON parser's depth
    is skipped as a damaged line, not a traceback."""
    import cocomix.eval.compare as cmp

    a = _run(tmp_path, "ntp-seed0", "ntp", 0, [5.0, 4.0], 1e6, steps=[100, 200])
    b = _run(tmp_path, "ntp-seed1", "ntp", 1, [5.0, 4.0], 1e6, steps=[150, 250])
    with pytest.raises(CocomixError, match="share no evaluation step"):
        compare([a, b], tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
    with (a / "metrics.jsonl").open("a") as fh:
        fh.write("\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    monkeypatch.setattr(cmp, "plot", lambda groups, out, x: (out / f"loss_vs_{x}.png").write_bytes(b"") or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        compare([a], tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "loss_vs_tokens.png").write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        compare([a], tmp_path / "kept")
    assert (tmp_path / "kept" / "loss_vs_tokens.png").exists()  # a folder given existing keeps what it held
    monkeypatch.undo()
    assert compare([a], tmp_path / "new" / "out")["groups"][0].final()[0] == pytest.approx(4.0)
