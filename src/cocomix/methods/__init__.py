"""Training methods behind one protocol (`Method`); `METHODS` maps a config's `method` name to its class."""

from cocomix.methods.base import Batch, Method, next_token_loss
from cocomix.methods.cocomix import CoCoMix
from cocomix.methods.kd import KD
from cocomix.methods.ntp import NTP
from cocomix.methods.pause import Pause

METHODS: dict[str, type[Method]] = {m.name: m for m in (NTP, CoCoMix, KD, Pause)}

__all__ = ["KD", "METHODS", "NTP", "Batch", "CoCoMix", "Method", "Pause", "next_token_loss"]
