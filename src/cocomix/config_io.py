"""Building a `RunConfig` from dicts, JSON/TOML files and `key=value` overrides, with errors that name the field
(the config dataclasses themselves are in `cocomix.config`).

No paper equation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from cocomix import json_text
from cocomix.config import RunConfig
from cocomix.config_checks import check
from cocomix.errors import ConfigError


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check `value` against the annotation `tp`; lists become tuples, ints widen to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError:
                pass
        kinds = " or ".join(_describe(a) for a in args if a is not type(None))
        if type(None) in args:
            kinds += " or null"
        check(False, name, kinds, value)
    if origin is tuple:
        check(isinstance(value, (list, tuple)), name, 'a list, e.g. ["a", "b"]', value)
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, item, name) for v in value)
    if tp is bool:
        check(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        check(abs(value) <= 2**64, name, "an integer of magnitude at most 2**64", value)
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value), name,
               "a finite number", value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), name, "a string", value)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)
    raise TypeError(f"unsupported annotation {tp} for {name}")


def _describe(tp: Any) -> str:
    """How an override spells a value of annotation `tp` (for error messages)."""
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, "a list" if typing.get_origin(tp) is tuple else str(tp))


def _finite(value: int | float) -> bool:
    """A number a float field can hold (a huge integer overflows float)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and ill-typed values by name."""
    where = prefix or "config"
    check(isinstance(data, dict), where, "a mapping", data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown field "
                          f"(known: {', '.join(sorted(names))})")
    # a section given as null (YAML's empty `train:` converted to JSON) is one left out: its defaults
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()
              if not (v is None and dataclasses.is_dataclass(hints[k]))}
    return cls(**kwargs)


_LOOSE_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")  # .1, 1., +3, 1.e-3: not JSON


def _parse_value(text: str) -> Any:
    """JSON (numbers, true/false, lists, quoted strings), else a number as Python writes it, else the text."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"--set: a value nested too deeply to read ({text[:20]}…)") from None
    except ValueError:  # JSONDecodeError, or an integer beyond Python's digit limit
        if _LOOSE_NUMBER.fullmatch(text.strip()) and not re.fullmatch(r"\s*[+-]?0\d+\s*", text):  # "01": a name
            try:
                return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text) else float(text)
            except ValueError:  # beyond Python's integer digit limit
                return text
        return text


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` strings to a config dict. A string field takes the text as it is (stripped;
    `data.path=2024` is a path); other values are parsed as JSON, else as a number such as `.1`, else taken as a
    string. A section the dict leaves out (a partial config file) is created; a whole section given as a JSON
    object (`model={"n_layer": 2}`) is merged into the one there, field by field, as a config file is."""
    out = json.loads(json.dumps(base))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted field name, e.g. train.lr=3e-4")
        node, cls = out, RunConfig
        for i, p in enumerate(parts[:-1]):
            section = _field_types(cls).get(p)
            if not isinstance(node.get(p), dict):
                if not dataclasses.is_dataclass(section):
                    known = sorted(k for k, v in _field_types(cls).items() if dataclasses.is_dataclass(v))
                    if section is not None:  # a field, given as if it were a section
                        field = ".".join(parts[:i + 1])
                        raise ConfigError(f"{key}: {field} is a field, not a section (expected {field}=VALUE)")
                    raise ConfigError(f"{key}: unknown config section {p!r} (known: {', '.join(known)})")
                if node.get(p) is not None:  # the file's own wrong value, not replaced by the defaults
                    shown = repr(node[p])
                    raise ConfigError(f"{'.'.join(parts[:i + 1])}: expected a mapping, got "
                                      f"{shown if len(shown) <= 80 else shown[:77] + '...'}")
                node[p] = {}  # left out of the file: its defaults, with this override
            node, cls = node[p], section
        tp = _field_types(cls).get(parts[-1])
        value = raw.strip() if tp is str and not raw.strip().startswith('"') else _parse_value(raw)
        if dataclasses.is_dataclass(tp) and value is None:  # (a file's null section is one it leaves out; here,
            # over a preset, it would silently put the defaults in place of the preset's section)
            raise ConfigError(f"--set {item.strip()!r}: {key.strip()} is a section; set its fields "
                              f"({key.strip()}.FIELD=VALUE) or leave it out")
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            value = merge_config(node[parts[-1]], value)  # `model={"n_layer": 2}` sets one field, as --config does
        node[parts[-1]] = value
    return out


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values in place of its own, section by section (a config file on top of a preset); a
    section `over` gives as null is one it leaves out: `base`'s stays."""
    out = json.loads(json.dumps(base))
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a run config from .json or .toml, or from a run directory (its `config.json`, the config it trained
    with); a missing or malformed file is a one-line ConfigError."""
    p = Path(path)
    if p.is_dir():
        from cocomix.outputs import RUN, output_kind

        kind = output_kind(p)
        if kind not in (None, RUN):  # an exported model's config.json is a transformers config, not a run's
            raise ConfigError(f"{p}: holds {kind}, not a run; expected a .json or .toml config file or a run "
                              "directory")
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p}: a directory without config.json; expected a .json or .toml config file or a "
                              "run directory")
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"{p}: " + ("not a regular file; expected a .json or .toml config file" if p.exists()
                                      else "config file not found"))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the config file ({getattr(e, 'strerror', None) or e})") from None
    if p.suffix not in (".json", ".toml"):
        raise ConfigError(f"{p}: expected a .json or .toml config file")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json_text.loads(text, object_pairs_hook=_unique_keys)  # TOML refuses a repeated key itself
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config sections at the top level")
    bad = _first_non_json(data)
    if bad is not None:  # TOML dates and times have no config field
        raise ConfigError(f"{p}: {bad[0]}: expected a string, number, boolean or list, got a "
                          f"{type(bad[1]).__name__} ({bad[1]})")
    return data


def _first_non_json(value: Any, key: str = "") -> tuple[str, Any] | None:
    """(dotted key, value) of the first value in a parsed config that JSON cannot hold, else None."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _first_non_json(v, f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        return next((f for i, v in enumerate(value) if (f := _first_non_json(v, f"{key}[{i}]")) is not None), None)
    return None if value is None or isinstance(value, (str, int, float, bool)) else (key, value)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, with a ValueError for a key given twice (json keeps the last one without a word)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object; the first one would be ignored")
        out[key] = value
    return out


def run_config(data: dict[str, Any]) -> RunConfig:
    """Validated RunConfig from a nested dict (the JSON of `RunConfig.to_dict`)."""
    return from_dict(RunConfig, data)
