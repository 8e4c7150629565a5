"""The README's Library example, run as written (a few steps, on the test store standing in for data/shakespeare)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_library_example_runs_as_written(store_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    block = README.read_text().split("\n## Library\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert block.count("steps=200") == 1
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shakespeare").symlink_to(store_dir)  # where the tiny preset reads
    monkeypatch.chdir(tmp_path)
    printed, names = io.StringIO(), {}
    with contextlib.redirect_stdout(printed):
        exec(compile(block.replace("steps=200", "steps=3"), str(README), "exec"), names)  # noqa: S102
    ppl, _, text = printed.getvalue().partition(" ")
    assert math.isfinite(float(ppl)) and text.startswith("KING HENRY:")
    assert names["result"].steps == 3 and (tmp_path / "runs" / "tiny" / "checkpoints" / "latest").is_file()
    # the tiny model's 4096 ids over the store's 320-token tokenizer: vocab_limit keeps every sampled id decodable
    assert names["model"].cfg.vocab_size == 4096 and int(names["tokens"].max()) < names["tok"].vocab_size == 320
    answers = names["answers"]  # generate_ragged: the new ids of each prompt, up to 20, decodable
    assert len(answers) == 2 and all(1 <= len(a) <= 20 and max(a) < 320 for a in answers)
