"""Metric sinks: metrics.jsonl trimming on resume, duration formatting, missing optional backends."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cocomix.errors import ConfigError
from cocomix.progress import format_duration
from cocomix.train.metrics import MetricsLogger


def test_resume_trims_events_past_the_checkpoint(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path, quiet=True)
    for step in (5, 10, 15, 20):
        log.log({"kind": "train", "step": step, "loss": 1.0})
    MetricsLogger(tmp_path, resume_step=10, quiet=True)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10]
    MetricsLogger(tmp_path, quiet=True)  # a fresh run starts a fresh log
    assert not (tmp_path / "metrics.jsonl").exists()


def test_damaged_last_line_does_not_block_resume(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 5}\n{"kind": "train", "st')
    MetricsLogger(tmp_path, resume_step=10, quiet=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"kind": "train", "step": 5}\n'


def test_format_duration() -> None:
    assert format_duration(75) == "1m15s" and format_duration(3 * 3600 + 120) == "3h02m"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_missing_tensorboard_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        MetricsLogger(tmp_path, backends=("tensorboard",))


def test_progress_in_a_log_file_is_whole_lines(capsys: pytest.CaptureFixture) -> None:
    """stderr is not a terminal here (pytest captures it): no carriage returns, a line at the end."""
    from cocomix.progress import ProgressLine

    line = ProgressLine("extract-concepts train", 10, log_interval=3600)
    for done in range(1, 11):
        line.update(done)
    line.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == [err.splitlines()[0]] and "10/10 windows" in err


def test_wandb_keeps_one_run_id_across_resumes_and_says_what_it_keeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """The wandb run id is ours (wandb moved its generator between versions), written once, reused on resume."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw) or types.SimpleNamespace(log=lambda *a, **k: None,
                                                                        finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    MetricsLogger(tmp_path, ("wandb",), config={"x": 1}).close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert len(run_id) == 8 and calls[0]["id"] == run_id and calls[0]["resume"] == "allow"
    MetricsLogger(tmp_path, ("wandb",), resume_step=3, config={"x": 1}).close()
    assert calls[1]["id"] == run_id and "wandb keeps the values the interrupted attempt logged after step 3" in \
        capsys.readouterr().err


def test_a_wandb_start_that_fails_is_one_config_error_and_leaves_no_run_id(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from cocomix.errors import ConfigError

    def refuse(**kw: object) -> None:
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])\nmore detail")

    fake = types.ModuleType("wandb")
    fake.init = refuse
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with pytest.raises(ConfigError, match=r"^train.log_backends: wandb could not start \(RuntimeError: api_key not "
                                          r"configured \(no-tty\)\. call wandb.login\(key=\[your_api_key\]\)\); "
                                          r"log in with `wandb login`, or set WANDB_MODE=offline$"):
        MetricsLogger(tmp_path, ("wandb",), config={"x": 1})
    assert not (tmp_path / "wandb_run_id").exists()


def test_throughput_is_tokens_over_the_interval_without_evaluations_and_eta_from_the_mean_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """tokens/s counts the last interval's tokens over its time minus what `exclude` left out (an evaluation);
    the ETA is the mean step time since the (re)start, evaluations included, times the steps left."""
    from cocomix.train import metrics

    clock = iter([100.0, 110.0, 130.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    meter = metrics.Throughput(start_step=10, total_steps=30)  # resumed at step 10; t0 = 100
    meter.add_tokens(4000)
    meter.exclude(2.0)                                          # a 2 s evaluation inside the interval
    assert meter.report(step=15) == (4000 / 8.0, 10.0 / 5 * 15)  # 8 s of training; 2 s per step, 15 steps left
    meter.add_tokens(1000)
    assert meter.report(step=20) == (1000 / 20.0, 30.0 / 10 * 10)


def test_tensorboard_and_wandb_receive_every_scalar_under_its_event_kind(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Both backends get each event's numbers (not its strings) as KIND/NAME at the event's step; a resume purges
    TensorBoard's events past the checkpoint; close flushes both once."""
    import sys
    import types

    writers: list[dict] = []

    class Writer:
        def __init__(self, folder: str, purge_step: int | None = None) -> None:
            writers.append({"folder": folder, "purge": purge_step, "scalars": [], "closed": 0})

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            writers[-1]["scalars"].append((tag, value, step))

        def close(self) -> None:
            writers[-1]["closed"] += 1

    logged: list[tuple[dict, int]] = []
    finished: list[int] = []
    tensorboard = types.ModuleType("torch.utils.tensorboard")
    tensorboard.SummaryWriter = Writer
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: types.SimpleNamespace(log=lambda values, step: logged.append((values, step)),
                                                    finish=lambda: finished.append(1))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tensorboard)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    logger = MetricsLogger(tmp_path, ("tensorboard", "wandb"), resume_step=4)
    logger.log({"kind": "train", "step": 5, "loss": 2.5, "lr": 1e-3, "note": "text"})
    logger.log({"kind": "eval", "step": 5, "val_loss": 2.75})
    logger.close()
    logger.close()
    assert writers == [{"folder": str(tmp_path / "tensorboard"), "purge": 5, "closed": 1,
                        "scalars": [("train/loss", 2.5, 5), ("train/lr", 1e-3, 5), ("eval/val_loss", 2.75, 5)]}]
    assert logged == [({"train/loss": 2.5, "train/lr": 1e-3}, 5), ({"eval/val_loss": 2.75}, 5)] and finished == [1]


def test_progress_line_rate_and_eta_count_from_its_start(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """A resumed job (start 10 of 100): 20 more windows in 10 s is 2/s, so 70 left take 35 s."""
    from cocomix import progress

    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    line = progress.ProgressLine("extract", 100, start=10, interval=0.0, log_interval=0.0)
    line.update(30)
    assert capsys.readouterr().err.strip() == "extract: 30/100 windows (2.0/s, eta 0m35s)"


def test_a_shorter_progress_line_covers_the_longer_one_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the line is rewritten after `\r`: a shorter text is padded over what the longer one left
    ("eta 0m33s)eta 3m10s)" before)."""
    import io

    from cocomix import progress

    err = io.StringIO()
    err.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(progress.sys, "stderr", err)
    clock = iter([0.0, 1.0, 1000.0, 1001.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    line = progress.ProgressLine("extract", 10_000, interval=0.0)
    line.update(1)  # 1 window in 1 s
    line.update(30)  # 30 in 1000 s: "33.3 s per window", a longer line ...
    line.update(5000)  # ... then a shorter one, padded over it
    frames = err.getvalue().split("\r")[1:]
    assert frames[1].startswith("extract: 30/10000 windows (33.3 s per window, eta ")
    assert frames[2].rstrip() == "extract: 5000/10000 windows (5.0/s, eta 16m41s)"
    assert len(frames[2]) == len(frames[1]) and frames[2].endswith(" ")


def test_a_restart_from_step_0_drops_what_an_earlier_attempt_logged(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that never reached a checkpoint starts again (resume_step None): its metrics.jsonl, TensorBoard
    events and wandb run id from the failed attempt go, so no backend shows both attempts over the same steps; a
    resume from a checkpoint keeps them."""
    for name in ("metrics.jsonl", "wandb_run_id", "tensorboard/events.out.tfevents.1"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text('{"kind": "train", "step": 2}\n')
    MetricsLogger(tmp_path, (), resume_step=2).close()
    assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "wandb_run_id").is_file()
    MetricsLogger(tmp_path, ()).close()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb_run_id").exists()
    assert not (tmp_path / "metrics.jsonl").exists() or (tmp_path / "metrics.jsonl").read_text() == ""
