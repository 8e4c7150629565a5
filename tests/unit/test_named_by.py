"""`errors.named_by`: an error from loading what a config key names is prefixed with that key, once."""

from __future__ import annotations

import pytest

from cocomix.errors import CheckpointError, ConfigError, DataError, named_by


@pytest.mark.parametrize("said,shown", [
    ("runs/x: no such folder", "concept.teacher: runs/x: no such folder"),  # a path: the key in front
    ("concept.teacher_layer: expected a block index", "concept.teacher_layer: expected a block index"),  # named
    ("teacher: loading a Hugging Face teacher needs transformers",  # a bare key: replaced, not doubled
     "concept.teacher: loading a Hugging Face teacher needs transformers"),
    ("concept.cache_v1/meta.json: missing", "concept.teacher: concept.cache_v1/meta.json: missing"),  # a path
])
def test_the_key_is_said_once(said: str, shown: str) -> None:
    for kind in (ConfigError, DataError, CheckpointError):
        with pytest.raises(kind) as caught, named_by("concept.teacher"):
            raise kind(said)
        assert str(caught.value) == shown and type(caught.value) is kind


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(ValueError, match="^a bug$"), named_by("concept.sae"):
        raise ValueError("a bug")
