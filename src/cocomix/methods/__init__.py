"""Training methods behind one protocol (`Method`); `METHODS` maps a config's `method` name to its class."""

from cocomix.methods.base import Method, next_token_loss
from cocomix.methods.ntp import NTP

METHODS: dict[str, type[Method]] = {NTP.name: NTP}

__all__ = ["METHODS", "NTP", "Method", "next_token_loss"]
