"""Training methods behind one protocol (`Method`); `METHODS` maps a config's `method` name to its class.

Each method's loss is in its module (CoCoMix: paper Eq. 2 and 4).
"""

from collections.abc import Iterable

from cocomix.methods.base import Batch, Method, next_token_loss
from cocomix.methods.cocomix import CoCoMix
from cocomix.methods.kd import KD
from cocomix.methods.kd_pause import KDPause
from cocomix.methods.ntp import NTP
from cocomix.methods.pause import Pause

METHODS: dict[str, type[Method]] = {m.name: m for m in (NTP, CoCoMix, KD, Pause, KDPause)}
BUILT_IN = tuple(METHODS)
"""The methods of this package (`METHODS` may gain others' from entry points: `methods/plugins.py`)."""
DISTILLING = ("kd", "kd-pause")
"""Methods with the KD loss (a frozen teacher's next-token distribution every step)."""
PAUSING = ("pause", "kd-pause")
"""Methods whose student has a pause slot after every token from `concept.concept_layer` on."""


def unread_concept_settings(method: str, keys: Iterable[str]) -> list[str]:
    """The `concept.*` keys among `keys` that `method` does not read (`Method.concept_settings`; a method that does
    not say reads them all): changing one changes nothing (`train --set` warns, a resume accepts it, `compare`
    lets seeds differ in it)."""
    used = getattr(METHODS.get(method), "concept_settings", None)
    return [k for k in keys if k.startswith("concept.") and used is not None and k not in used]

__all__ = ["BUILT_IN", "DISTILLING", "KD", "METHODS", "NTP", "PAUSING", "Batch", "CoCoMix", "KDPause", "Method",
           "Pause", "next_token_loss", "unread_concept_settings"]
