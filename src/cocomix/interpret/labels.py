"""Readable names for SAE latents, built from `cocomix describe-concepts` output (concepts.json).

A latent's label is its most common activating token among its strongest contexts (the «marked» token), e.g.
`«\n» ×6/8`, and its description the strongest context itself. `consistency` — the share of the strongest
contexts whose activating token is the most common one — says how well a single token describes the latent; it
is how steering picks "well described" concepts automatically.

No paper equation.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cocomix import json_text
from cocomix.errors import CocomixError, CocomixWarning
from cocomix.shown_text import visible

_MARKED = re.compile(r"«(.*?)»", re.S)


@dataclass(frozen=True)
class ConceptLabel:
    latent: int
    frequency: float
    """Share of teacher positions where the latent is active (describe-concepts split)."""
    token: str
    """Most common activating token among the strongest contexts ('' when the latent never fired)."""
    consistency: float
    """Share of the strongest contexts whose activating token is `token` (0 when it never fired)."""
    context: str
    """The strongest context, activating token marked «like this» ('' when it never fired)."""
    described: bool = True
    """False for `ConceptBook.empty` labels (no describe-concepts report given)."""

    def short(self) -> str:
        """One-line name: the activating token (escaped) and how consistent it is."""
        if not self.described:
            return "-"
        if not self.context:
            return "(never fired)"
        return f"«{visible(self.token)}» {self.consistency:.0%}"


def _label(entry: dict) -> ConceptLabel:
    """One latent's label from its concepts.json entry (KeyError / TypeError / ValueError when malformed)."""
    examples = entry.get("examples", [])
    texts = [str(ex.get("text") or "") for ex in examples]
    marked = [str(ex["token"]) if "token" in ex else m.group(1)  # older files: the «marked» span of the text
              for ex, text in zip(examples, texts, strict=True) if "token" in ex or (m := _MARKED.search(text))]
    token, n = Counter(marked).most_common(1)[0] if marked else ("", 0)
    return ConceptLabel(int(entry["latent"]), float(entry.get("frequency", 0.0)), token,
                        n / len(marked) if marked else 0.0, texts[0] if texts else "")


SOURCE_KEYS = ("teacher", "teacher_layer", "sae", "sae_sha256", "teacher_fingerprint")


class ConceptBook:
    """Labels for all latents of one SAE; `ConceptBook.empty(C)` when no descriptions are available."""

    def __init__(self, labels: list[ConceptLabel], source: dict | None = None) -> None:
        self.labels = labels
        self.source = source or {}
        """What describe-concepts read: teacher, teacher_layer, sae and (since they are recorded) sae_sha256 and
        teacher_fingerprint; empty for `empty`."""

    @classmethod
    def empty(cls, n_latents: int) -> ConceptBook:
        return cls([ConceptLabel(i, 0.0, "", 0.0, "", described=False) for i in range(n_latents)])

    @classmethod
    def load(cls, path: str | Path) -> ConceptBook:
        """From a describe-concepts folder or its concepts.json."""
        p = Path(path)
        p = p / "concepts.json" if p.is_dir() else p
        if not p.is_file():
            raise CocomixError(f"--concepts {path}: no concepts.json there (give a describe-concepts output folder)")
        try:
            data = json_text.loads(p.read_text(encoding="utf-8"))
            latents = data["latents"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CocomixError(f"{p}: not a describe-concepts concepts.json ({type(e).__name__}: {e})") from None
        labels = []
        try:
            for entry in latents:
                labels.append(_label(entry))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            where = f" (entry {len(labels)})" if isinstance(latents, list) else ""
            raise CocomixError(f"{p}: not a describe-concepts concepts.json{where}: {type(e).__name__}: {e}") from None
        labels.sort(key=lambda lab: lab.latent)
        if [lab.latent for lab in labels] != list(range(len(labels))):
            raise CocomixError(f"{p}: latents are not numbered 0..{len(labels) - 1}")
        source = {k: data[k] for k in SOURCE_KEYS if k in data} if isinstance(data, dict) else {}
        return cls(labels, source)

    def check_source(self, sae: str, teacher: str, teacher_layer: int, where: str) -> None:
        """CocomixError when these labels describe another SAE or layer than a run's `concept.sae` and
        `concept.teacher_layer`, a warning for another teacher than `concept.teacher` (each compared when both
        sides know it: a content hash of local files, so a moved file still matches; hub names are not compared)."""
        from cocomix.concepts.identity import same_sae, teacher_fingerprint

        got = self.source
        if isinstance(got.get("teacher_layer"), int) and got["teacher_layer"] != teacher_layer:
            raise CocomixError(f"--concepts {where}: describes teacher_layer {got['teacher_layer']}'s latents, the "
                               f"run's concepts are teacher_layer {teacher_layer}'s")
        if got.get("sae_sha256") and sae and Path(sae).exists() and not same_sae(got["sae_sha256"], sae,
                                                                                 teacher_layer):
            raise CocomixError(f"--concepts {where}: describes another SAE ({got.get('sae')!r}) than the run's "
                               f"concept.sae {sae!r} (their files differ); describe that one with describe-concepts")
        if got.get("teacher_fingerprint") and teacher:
            try:
                mine = teacher_fingerprint(teacher)
            except CocomixError:  # a teacher run without checkpoints now: nothing to compare with
                mine = None
            if mine is not None and mine != got["teacher_fingerprint"]:  # (a teacher run trained on, say)
                warnings.warn(f"--concepts {where}: made with another teacher ({got.get('teacher')!r}) than the "
                              f"run's concept.teacher {teacher!r} now; the same SAE's latents, but their contexts "
                              "were read through that teacher", CocomixWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, latent: int) -> ConceptLabel:
        return self.labels[latent]
