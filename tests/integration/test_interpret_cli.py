"""`cocomix inspect / steer / steer-eval / compression` end to end on a tiny trained CoCoMix run, and their
one-line errors (exit code 2) for bad concept indices, α and runs without concepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli as _cli


@pytest.fixture(scope="module")
def runs(store_dir: Path, concept_parts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
         ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interpret")
    common = ["model.vocab_size=320", "model.context_length=64", f"data.path={store_dir}", "data.seq_len=32",
              "train.steps=20", "train.micro_batch_size=8", "train.eval_every=0", "train.warmup_steps=2"]
    concept = [f"concept.teacher={concept_parts[0]}", f"concept.sae={concept_parts[1]}", "concept.n_latents=256",
               "concept.teacher_layer=1", "concept.mix_k=8"]
    for name, preset, sets in (("cocomix", "tiny-cocomix", common + concept), ("ntp", "tiny", common)):
        r = _cli("train", "--preset", preset, *[x for kv in sets for x in ("--set", kv)], "--out", str(root / name))
        assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("describe-concepts", "--data", str(store_dir), "--teacher", str(concept_parts[0]), "--teacher-layer", "1",
             "--sae", str(concept_parts[1]), "--seq-len", "32", "--out", str(root / "concepts"))
    assert r.returncode == 0, r.stderr[-2000:]
    return {"cocomix": root / "cocomix", "ntp": root / "ntp", "concepts": root / "concepts", "root": root}


def test_inspect_prints_a_table_and_writes_a_page(runs: dict[str, Path]) -> None:
    html = runs["root"] / "inspect.html"
    r = _cli("inspect", str(runs["cocomix"]), "--text", "the king is dead", "--concepts", str(runs["concepts"]),
             "--top", "2", "--html", str(html))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(" pos") and all(line.count("#") == 2 for line in lines[1:-1])
    first = html.read_text()
    assert "<!DOCTYPE html>" in first
    again = _cli("inspect", str(runs["cocomix"]), "--text", "a horse", "--html", str(html))  # its own page: replaced
    assert again.returncode == 0 and html.read_text() != first
    r = _cli("inspect", "--run", str(runs["cocomix"]), "--val-window", "0", "--max-tokens", "8")  # RUN or --run
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 9
    assert "no describe-concepts labels: pass --concepts DIR" in r.stdout.splitlines()[0]
    r = _cli("inspect", str(runs["cocomix"]), "--text", "the king is dead " * 40, "--max-tokens", "5")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 6 and "its first 5 are shown" in r.stderr


def test_steer_runs_student_and_teacher_and_reports_mixing(runs: dict[str, Path]) -> None:
    r = _cli("steer", str(runs["cocomix"]), "--prompt", "the king", "--concept", "5", "--concept", "9",
             "--alpha", "10", "--max-new-tokens", "6", "--teacher-check")
    assert r.returncode == 0, r.stderr
    assert "student, unsteered (α = 1)" in r.stdout and "teacher, SAE latent steered" in r.stdout
    assert "#5 mixed at" in r.stdout and "#9 mixed at" in r.stdout and "of the generating positions" in r.stdout
    assert re.search(r"teacher: #5 active at \d+% of the generating positions unsteered, \d+% steered", r.stdout)
    r = _cli("steer", str(runs["cocomix"]), "--prompt", "the king", "--concept", "5", "--alpha", "3",
             "--max-new-tokens", "4")  # no --concepts: no labels
    assert r.returncode == 0 and "steering: #5 × 3 (labels: pass --concepts DIR)" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--concept", "256", "--alpha", "2"], "--concept: expected an index in [0, 255], got 256"),
    (["--concept", "3", "--alpha", "nan"], "--alpha: expected a finite number, got nan"),
    (["--concept", "3", "--alpha", "1e30"], "--alpha: expected |α| <= 10000, got 1e+30 (the paper steers with "
                                            "-10 ... 10; a far larger α overflows the model's floats)"),
    (["--concept", "3", "--concept", "4", "--alpha", "1", "--alpha", "2", "--alpha", "3"],
     "--alpha: expected one α per concept (2), got 3"),
])
def test_steer_bad_input_is_a_one_line_error(runs: dict[str, Path], args: list[str], message: str) -> None:
    r = _cli("steer", str(runs["cocomix"]), "--prompt", "the king", *args, "--max-new-tokens", "4")
    assert r.returncode == 2 and r.stderr.strip() == f"cocomix: error: {message}"


def test_interpret_commands_refuse_a_run_without_concepts(runs: dict[str, Path]) -> None:
    for args in (["inspect", str(runs["ntp"]), "--text", "the king"], ["compression", str(runs["ntp"]), "--out",
                                                                         str(runs["root"] / "c")]):
        r = _cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "expected a CoCoMix run" in r.stderr


def test_steer_eval_and_compression_write_reports(runs: dict[str, Path]) -> None:
    out = runs["root"] / "steering"
    r = _cli("steer-eval", str(runs["cocomix"]), "--concepts", str(runs["concepts"]), "--concept", "1",
             "--concept", "2", "--alphas=-10,0,1,10", "--prompts", "4", "--prompt-len", "4",
             "--max-new-tokens", "5", "--teacher-check", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("cocomix: warning: --sae: the SAE leaves") == 1  # the random test SAE fits no teacher
    result = json.loads((out / "steering.json").read_text())
    rows = result["rows"]
    assert len(rows) == 2 * 4 and all(0.0 <= row["activation_rate"] <= 1.0 for row in rows)
    assert all(0.0 <= row["teacher_steered_rate"] <= 1.0 for row in rows)
    # α = 1 leaves the teacher unsteered: both concepts' reference texts are the same plain teacher continuation
    plain = [row["teacher_steered_nll"] for row in rows if row["alpha"] == 1.0]
    assert plain[0] == plain[1]
    for c in (1, 2):  # α is applied: the steered rows differ from the unsteered α = 1
        by_alpha = {row["alpha"]: row for row in rows if row["concept"] == c}
        assert any(by_alpha[a]["mixed"] != by_alpha[1.0]["mixed"] for a in (-10.0, 0.0, 10.0)), by_alpha
    assert "teacher_ratio_max_alpha_over_zero" in result["summary"]
    md = (out / "steering.md").read_text()
    assert (out / "steering.png").stat().st_size > 1000 and "| #1 |" in md and "teacher steered (reference)" in md
    assert "| #1, teacher steered |" in md and "Against the unsteered α = 1:" in md
    assert "ratio_max_alpha_over_one" in result["summary"]
    r = _cli("compression", str(runs["cocomix"]), "--out", str(runs["root"] / "comp"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["concepts"] == 256 and 0.0 <= summary["fraction_below"] <= 1.0
    assert 0.0 <= summary["fraction_near_initial"] <= 1.0 and summary["initial_norm"] > 0
    r = _cli("compression", str(runs["cocomix"]), "--out", str(runs["root"] / "comp"))  # its own output: replaced
    assert r.returncode == 0 and "holds a compression analysis; this run will replace it" in r.stderr
    # an argument error into an existing output replaces nothing: one line, no note that it would
    for args, said in [(["compression", str(runs["cocomix"]), "--threshold", "0", "--out", str(runs["root"] / "comp")],
                        "--threshold: expected a finite number > 0"),
                       (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=1,2", "--out", str(out)],
                        "--alphas: include 1 (unsteered) and 0"),
                       (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--prompts", "0", "--out", str(out)],
                        "prompts"),
                       (["steer-eval", str(runs["cocomix"]), "--concept", "999", "--out", str(out)],  # (before the
                        "--concept: expected an index in [0, 255], got 999")]:                  # teacher loads)
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr, r.stderr


def test_steer_eval_steers_student_and_teacher_with_every_alpha(runs: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (concept, α) of the table is generated with that concept and α, by the student and by the teacher (the
    tiny random teacher's greedy text rarely changes under steering, so its rows alone cannot show this)."""
    import cocomix.interpret.steer_eval as se
    from cocomix.cli import main

    seen: dict[str, list[tuple[list[int], list[float]]]] = {"student": [], "teacher": []}
    for who, real, at in (("student", se.steer_student, 2), ("teacher", se.steer_teacher, 3)):
        def spy(*args: Any, _real: Any = real, _who: str = who, _at: int = at, **kw: Any) -> Any:
            seen[_who].append((list(args[_at]), list(args[_at + 1])))
            return _real(*args, **kw)

        monkeypatch.setattr(se, f"steer_{who}", spy)
    out = runs["root"] / "steering-spied"
    assert main(["steer-eval", str(runs["cocomix"]), "--concepts", str(runs["concepts"]), "--concept", "1",
                 "--concept", "2", "--alphas=-10,0,1,10", "--prompts", "2", "--prompt-len", "4", "--max-new-tokens",
                 "2", "--teacher-check", "--out", str(out)]) == 0
    want = [([c], [a]) for c in (1, 2) for a in (-10.0, 0.0, 1.0, 10.0)]
    assert seen == {"student": want, "teacher": want}


def test_interpret_bad_inputs_are_one_line_errors(runs: dict[str, Path], store_dir: Path,
                                                  concept_parts: tuple[Path, Path]) -> None:
    import torch

    from cocomix.config import ModelConfig
    from cocomix.export import export_hf
    from cocomix.model import Transformer

    root = runs["root"]
    (root / "a-folder.html").mkdir(exist_ok=True)
    torch.manual_seed(0)  # a teacher that reads 16 positions: too few for 4 + 20 tokens, refused before any work
    export_hf(Transformer(ModelConfig(vocab_size=320, n_layer=2, n_head=2, d_model=32, context_length=16)),
              root / "short-teacher")  # no tokenizer either: the error comes before that warning
    for args, message in (
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1", "--prompts", "2", "--prompt-len",
              "4", "--max-new-tokens", "20", "--teacher", str(root / "short-teacher"), "--out", str(root / "se3")],
             "--prompt-len + --max-new-tokens: 24-token windows exceed the teacher's 16 positions"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1,10", "--prompts", "2",
              "--prompt-len", "40", "--max-new-tokens", "10", "--out", str(root / "se")], "--prompt-len: prompts are"),
            (["inspect", str(runs["cocomix"]), "--val-window", "0", "--max-tokens", "0"], "--max-tokens: expected"),
            (["inspect", str(runs["cocomix"]), "--text", "the king", "--max-tokens", "65"],
             "--max-tokens: expected at most the model's context length 64, got 65"),
            (["inspect", str(runs["cocomix"]), "--text", "the king", "--html", str(root / "a-folder.html")],
             "a-folder.html: a folder; give a file name"),
            (["inspect", str(runs["cocomix"]), "--text", "the king", "--html", str(root / "no" / "page.html")],
             "its folder"),
            (["inspect", str(runs["cocomix"]), "--text", "the king", "--html", str(runs["cocomix"] / "config.json")],
             "config.json: exists and is not a page `cocomix inspect` wrote"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas", "-10,0,1", "--out", str(root / "se4")],
             "argparse reads '-10,0,1' as an option: write --alphas=-10,0,1"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1,nan", "--out", str(root / "se2")],
             "--alphas: expected a finite number, got nan"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--n-concepts", "4", "--out", str(root / "se7")],
             "--n-concepts: chooses concepts when no --concept is given; give one or the other"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1,-2e4", "--out", str(root / "se5")],
             "--alphas: expected |α| <= 10000, got -20000.0"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1", "--temperature=-1", "--out",
              str(root / "se6")], "--temperature: expected a finite number >= 0"),
            (["steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=0,1", "--top-k", "0", "--out",
              str(root / "se7")], "--top-k: expected an integer >= 1"),
            (["compression", str(runs["cocomix"]), "--threshold", "inf", "--out", str(root / "comp-inf")],
             "--threshold: expected a finite number > 0, got inf"),
            (["describe-concepts", "--data", str(store_dir), "--teacher", str(concept_parts[0]), "--teacher-layer",
              "1", "--sae", str(concept_parts[1]), "--seq-len", "32", "--top-n", "0", "--out", str(root / "d")],
             "--top-n: expected an integer >= 1")):
        r = _cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert not r.stdout  # refused before any table or work
    json.loads((runs["cocomix"] / "config.json").read_text())  # the run's config is intact


def test_the_teacher_steerability_example_runs(store_dir: Path, concept_parts: tuple[Path, Path]) -> None:
    """`examples/teacher_steerability.py` (the README's steering section quotes it) on the tiny HF teacher: one
    JSON line per chosen latent with its rates at α in {0, 1, α, −α}, then the summary."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "examples" / "teacher_steerability.py"), "--teacher",
                        str(concept_parts[0]), "--layer", "1", "--sae", str(concept_parts[1]), "--data", str(store_dir),
                        "--seq-len", "32", "--windows", "4", "--min-freq", "0", "--max-freq", "1", "--latents", "2",
                        "--prompts", "3", "--prompt-len", "8", "--new-tokens", "4"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert r.returncode == 0, r.stderr[-2000:]
    *rows, summary = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and summary["latents"] == 2 and summary["layer"] == 1
    for row in rows:
        assert set(row) == {"latent", "frequency", *(f"{k}@{a}" for k in ("rate", "nll") for a in (0, 1, 10, -10))}
        assert all(0.0 <= row[f"rate@{a}"] <= 1.0 for a in (0, 1, 10, -10)) and row["frequency"] > 0
    assert rows[0]["frequency"] >= rows[1]["frequency"]  # most frequent first


def test_steer_teacher_check_loads_the_teacher_first_and_takes_overrides(runs: dict[str, Path], tmp_path: Path,
                                                                        concept_parts: tuple[Path, Path]) -> None:
    """The teacher and SAE are loaded before any generation is printed; a run's relative concept.teacher that is
    not found from here says where it was read from and that --teacher overrides it, which works."""
    import shutil

    moved = tmp_path / "cocomix"
    shutil.copytree(runs["cocomix"], moved)
    config = json.loads((moved / "config.json").read_text())
    config["concept"]["teacher"] = "elsewhere/teacher"
    (moved / "config.json").write_text(json.dumps(config))
    base = ["steer", str(moved), "--prompt", "the king", "--concept", "3", "--alpha", "5", "--max-new-tokens", "4",
            "--teacher-check"]
    r = _cli(*base)
    assert r.returncode == 2 and not r.stdout, (r.stdout, r.stderr)
    assert "the run's concept.teacher 'elsewhere/teacher', read from" in r.stderr and "pass --teacher" in r.stderr
    r = _cli(*base, "--teacher", str(concept_parts[0]), "--sae", str(concept_parts[1]))
    assert r.returncode == 0, r.stderr
    assert "teacher, SAE latent steered" in r.stdout
    # the fixture's SAE is random, not trained on this teacher: steer says so, as steer-eval does (one line)
    warned = [line for line in r.stderr.splitlines() if line.startswith("cocomix: warning:")]
    assert len(warned) == 1 and "--sae: the SAE leaves" in warned[0] and "unexplained" in warned[0], r.stderr
    r = _cli(*base, "--teacher", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr and "concept.teacher" not in r.stderr and not r.stdout
    # an SAE of another width or another number of latents than the student's concepts: said before any text
    from cocomix.sae import TopKSAE
    from cocomix.sae.saelens import save_saelens

    for name, (d_in, latents), said in (("wide", (48, 256), "the SAE reads 48-wide activations"),
                                        ("more", (32, 512), "--sae: 512 latents, the student predicts 256")):
        save_saelens(TopKSAE(d_in, latents, 8), tmp_path / name)
        r = _cli(*base, "--teacher", str(concept_parts[0]), "--sae", str(tmp_path / name))
        assert r.returncode == 2 and said in r.stderr and not r.stdout, (r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_argument_error_into_an_existing_describe_output_is_one_line(runs: dict[str, Path], store_dir: Path,
                                                                       concept_parts: tuple[Path, Path]) -> None:
    """No "will replace it" note before the error: nothing is replaced."""
    r = _cli("describe-concepts", "--data", str(store_dir), "--teacher", str(concept_parts[0]), "--teacher-layer",
             "1", "--sae", str(concept_parts[1]), "--seq-len", "32", "--max-windows", "-5", "--out",
             str(runs["concepts"]))
    assert r.returncode == 2 and r.stderr.strip() == "cocomix: error: --max-windows: expected an integer >= 0, got -5"
    r = _cli("describe-concepts", "--data", str(store_dir), "--teacher", str(concept_parts[0]), "--teacher-layer",
             "1", "--sae", str(runs["root"] / "no-such-sae"), "--seq-len", "32", "--out", str(runs["concepts"]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no-such-sae" in r.stderr, r.stderr


def test_labels_of_another_sae_or_layer_are_refused_and_of_another_teacher_warned(runs: dict[str, Path]) -> None:
    """concepts.json records what it describes (sae_sha256, teacher_fingerprint, teacher_layer): labels made for
    another SAE of the same width or another layer would name the run's concepts wrongly, so inspect / steer
    refuse them; another teacher (the same SAE) is a warning."""
    report = json.loads((runs["concepts"] / "concepts.json").read_text())
    assert len(report["sae_sha256"]) == 64 and len(report["teacher_fingerprint"]) == 64 and report["teacher_layer"] == 1
    for change, message in ((("sae_sha256", "0" * 64), "describes another SAE"),
                            (("teacher_layer", 2), "describes teacher_layer 2's latents, the run's concepts are "
                                                   "teacher_layer 1's")):
        other = runs["root"] / f"other-{change[0]}"
        other.mkdir(exist_ok=True)
        (other / "concepts.json").write_text(json.dumps({**report, change[0]: change[1]}))
        for cmd in (["inspect", str(runs["cocomix"]), "--text", "the king"],
                    ["steer", str(runs["cocomix"]), "--prompt", "the king", "--concept", "3", "--alpha", "2",
                     "--max-new-tokens", "2"]):
            r = _cli(*cmd, "--concepts", str(other))
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    other = runs["root"] / "other-teacher"  # the same SAE read through another teacher: a warning
    other.mkdir(exist_ok=True)
    (other / "concepts.json").write_text(json.dumps({**report, "teacher_fingerprint": "0" * 64}))
    r = _cli("inspect", str(runs["cocomix"]), "--text", "the king", "--concepts", str(other))
    assert r.returncode == 0 and r.stderr.count("made with another teacher") == 1, r.stderr
    older = {k: v for k, v in report.items() if k not in ("sae_sha256", "teacher_fingerprint")}  # before recording
    (runs["root"] / "older").mkdir(exist_ok=True)
    (runs["root"] / "older" / "concepts.json").write_text(json.dumps(older))
    assert _cli("inspect", str(runs["cocomix"]), "--text", "the king", "--concepts",
                str(runs["root"] / "older")).returncode == 0


def test_the_sae_fit_check_of_steer_eval_reads_enough_positions(runs: dict[str, Path], store_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Short texts (4 + 5 tokens) are checked on as many windows as FIT_POSITIONS needs, not on 8 positions of
    one (where a fitting SAE read as unfit)."""
    from cocomix.data import TokenStore
    from cocomix.interpret import steer_eval

    shapes = []
    monkeypatch.setattr(steer_eval, "check_sae_fit", lambda teacher, sae, ids, field: shapes.append(ids.shape))
    r = _cli("steer-eval", str(runs["cocomix"]), "--concepts", str(runs["concepts"]), "--concept", "1",
             "--alphas=0,1", "--prompts", "2", "--prompt-len", "4", "--max-new-tokens", "5", "--out",
             str(runs["root"] / "steering-fit"))
    assert r.returncode == 0, r.stderr
    want = min(TokenStore.open(store_dir).num_chunks("val", 32), -(-steer_eval.FIT_POSITIONS // 8))
    assert want > 1 and [tuple(s) for s in shapes] == [(want, 9)]


def test_another_sae_of_the_same_shape_alphas_in_any_order_and_an_empty_val_split(
        runs: dict[str, Path], concept_parts: tuple[Path, Path], tmp_path: Path) -> None:
    """`--sae` must be the SAE the student's concept indices refer to (its labels come from it): another one of the
    same shape is refused, the run's own at another path accepted; steer-eval's rows come in α order; a store with
    no validation window is said as such."""
    import shutil

    from cocomix.data import prepare
    from cocomix.sae import TopKSAE
    from cocomix.sae.saelens import save_saelens
    from tests.integration.conftest import LINES

    save_saelens(TopKSAE(32, 256, 8), tmp_path / "other-sae")
    shutil.copytree(concept_parts[1], tmp_path / "same-sae")
    base = ["steer", str(runs["cocomix"]), "--prompt", "the king", "--concept", "3", "--alpha", "5",
            "--max-new-tokens", "2", "--teacher-check", "--teacher", str(concept_parts[0])]
    r = _cli(*base, "--sae", str(tmp_path / "other-sae"))
    assert r.returncode == 2 and not r.stdout and "not the SAE the student's concepts refer to" in r.stderr, r.stderr
    assert _cli(*base, "--sae", str(tmp_path / "same-sae")).returncode == 0
    # the checkpoint's record decides: the run's own SAE is accepted although its concept.sae now names other files
    moved = tmp_path / "moved-run"
    shutil.copytree(runs["cocomix"], moved)
    config = json.loads((moved / "config.json").read_text())
    config["concept"]["sae"] = str(tmp_path / "other-sae")
    (moved / "config.json").write_text(json.dumps(config))
    r = _cli(base[0], str(moved), *base[2:], "--sae", str(tmp_path / "same-sae"))
    assert r.returncode == 0, r.stderr
    # without --sae the run's own concept.sae is checked the same way: a file remade there after training is refused
    r = _cli(base[0], str(moved), *base[2:])
    assert r.returncode == 2 and not r.stdout, r.stderr
    assert f"the run's concept.sae '{tmp_path / 'other-sae'}': not the SAE the student's concepts refer to" in \
        r.stderr and "give the SAE the run was trained with as --sae" in r.stderr
    out = tmp_path / "steering"
    r = _cli("steer-eval", str(runs["cocomix"]), "--concept", "1", "--alphas=10,0,1,-10", "--prompts", "2",
             "--prompt-len", "4", "--max-new-tokens", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert [row["alpha"] for row in json.loads((out / "steering.json").read_text())["rows"]] == [-10, 0, 1, 10]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("\n".join(LINES * 20))
    train_only = tmp_path / "store"
    tokenizer = json.loads((runs["cocomix"] / "config.json").read_text())["data"]["path"] + "/tokenizer"
    prepare(f"text:{tmp_path / 'docs'}", train_only, tokenizer=tokenizer, val_fraction=0.0, progress=False)
    for args in (["inspect", str(runs["cocomix"]), "--data", str(train_only), "--val-window", "0"],
                 ["steer-eval", str(runs["cocomix"]), "--data", str(train_only), "--concepts", str(runs["concepts"]),
                  "--alphas=0,1", "--out", str(tmp_path / "se")]):
        r = _cli(*args)
        assert r.returncode == 2 and "its val split holds no window of the run's seq_len 32 tokens" in r.stderr, \
            r.stderr


def test_a_store_shorter_than_a_window_is_said_not_a_traceback(runs: dict[str, Path], store_dir: Path,
                                                              tmp_path: Path) -> None:
    """`--data` a store whose splits hold less than one seq_len window: steer --teacher-check reads its fit check in
    shorter windows, or notes that it skipped it (it raised a ValueError)."""
    import numpy as np

    from cocomix.data.adopt_store import adopt
    from cocomix.data.store import TokenStore

    eos = TokenStore.open(store_dir).eos_id
    ids = np.fromfile(store_dir / "train.bin", dtype="<u2")
    for tokens, said in ((20, None), (4, "the SAE's fit to the teacher is not checked")):
        small = tmp_path / f"small{tokens}"
        small.mkdir()
        for split in ("train", "val"):
            np.append(ids[:tokens - 1][ids[:tokens - 1] != eos], eos).astype("<u2").tofile(small / f"{split}.bin")
        adopt(small, tokenizer=str(store_dir / "tokenizer"), progress=False)
        r = _cli("steer", str(runs["cocomix"]), "--data", str(small), "--prompt", "the king", "--concept", "5",
                 "--alpha", "10", "--max-new-tokens", "4", "--teacher-check")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "teacher, SAE latent steered" in r.stdout and (said is None or said in r.stderr), r.stderr
