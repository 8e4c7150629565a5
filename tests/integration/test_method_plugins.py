"""A method from another package (a `cocomix.methods` entry point) trains, resumes and is read by every command."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cocomix.errors import CocomixWarning
from cocomix.methods import METHODS, plugins
from cocomix.train import train
from tests.cli import run_cli
from tests.integration.test_train import small_run

PLUGIN = '''
import torch.nn.functional as F

from cocomix.methods import NTP


class LabelSmoothedNTP(NTP):
    name = "ls-ntp"

    def loss(self, model, batch):
        logits = model(batch.ids).logits
        V = logits.shape[-1]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), batch.ids[:, 1:].reshape(-1),
                               label_smoothing=0.1)
        return loss, {"smoothing": 0.1}  # no "loss" metric (the returned loss is logged), a float metric
'''


def _install(site: Path) -> None:
    """A package and its dist-info as pip would leave them: importable, with entry points."""
    (site / "ls_ntp_plugin").mkdir(parents=True)
    (site / "ls_ntp_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "ls_ntp_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ls-ntp-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cocomix.methods]\nls-ntp = ls_ntp_plugin:LabelSmoothedNTP\n"
                                           "broken = ls_ntp_plugin:NoSuchClass\nntp = ls_ntp_plugin:LabelSmoothedNTP\n")


def test_an_entry_point_method_works_in_the_library_and_every_command(store_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins.reset()
    try:
        base = small_run(store_dir, steps=4, eval_every=2, save_every=2)
        with pytest.warns(CocomixWarning) as said:
            run = dataclasses.replace(base, method="ls-ntp")
        messages = sorted(str(w.message) for w in said)
        assert messages[0].startswith("method plugin 'broken' (ls_ntp_plugin:NoSuchClass): cannot be loaded")
        assert messages[1] == ("method plugin 'ntp' (ls_ntp_plugin:LabelSmoothedNTP): 'ntp' is a built-in method; "
                               "the plugin is ignored")
        assert METHODS["ntp"].__module__ == "cocomix.methods.ntp" and "broken" not in METHODS
        res = train(run, tmp_path / "r", quiet=True)
        events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
        logged = [e for e in events if e["kind"] == "train"]
        assert res.steps == 4 and logged and all(e["smoothing"] == pytest.approx(0.1) for e in logged)
        assert all(e["loss"] == pytest.approx(res.train_loss) for e in logged[-1:])  # the returned loss, logged
        code = run_cli("flops", "--config", str(tmp_path / "r" / "config.json"))
        assert code.returncode == 0 and "plain decoder" in json.loads(code.stdout)["note"]
        assert train(run, tmp_path / "r", resume=True, quiet=True).steps == 4  # finished: read back, not retrained
    finally:
        METHODS.pop("ls-ntp", None)
        plugins.reset()
    # a fresh process finds the plugin by its entry point alone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    r = subprocess.run([sys.executable, "-m", "cocomix", "eval", str(tmp_path / "r"), "--batches", "2"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["loss"] == pytest.approx(res.val_loss, rel=1e-5)


def test_a_name_a_script_registered_first_keeps_its_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cocomix.methods import NTP
    from cocomix.methods.plugins import load_method_plugins

    _install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    plugins.reset()
    methods = {**METHODS, "ls-ntp": NTP}  # a script's own registration, before any config named the plugin
    with pytest.warns(CocomixWarning) as said:  # (the fixture's broken and built-in-named entries warn too)
        load_method_plugins(methods)
    plugins.reset()
    assert ("method plugin 'ls-ntp' (ls_ntp_plugin:LabelSmoothedNTP): 'ls-ntp' is already registered; the plugin "
            "is ignored") in [str(w.message) for w in said]
    assert methods["ls-ntp"] is NTP
