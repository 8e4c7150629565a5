"""Methods from other packages: classes declared under the `cocomix.methods` entry-point group (no paper
equation).

A package that defines a new objective declares it in its own `pyproject.toml`:

    [project.entry-points."cocomix.methods"]
    ls-ntp = "my_package.methods:LabelSmoothedNTP"

and, once installed, `method = "ls-ntp"` works in every config and command (`train`, `--resume`, `eval`,
`generate`, `compare`, ...). The entry point's name is the config's `method` and must equal the class's `name`;
the class must subclass `Method`. Plugins are loaded the first time a config names a method that is not built
in; one that fails to load is a one-line warning, and its name stays unknown. Built-in names cannot be replaced.
"""

from __future__ import annotations

import importlib.metadata
import warnings

from cocomix.errors import CocomixWarning
from cocomix.methods.base import Method

GROUP = "cocomix.methods"
_loaded = False


def load_method_plugins(methods: dict[str, type[Method]]) -> None:
    """Add the classes of the `cocomix.methods` entry points to `methods` (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from cocomix.methods import BUILT_IN

    for ep in importlib.metadata.entry_points(group=GROUP):
        where = f"method plugin {ep.name!r} ({ep.value})"
        if ep.name in methods:  # a built-in name, or one a script (or another plugin) registered first
            what = "a built-in method" if ep.name in BUILT_IN else "already registered"
            warnings.warn(f"{where}: {ep.name!r} is {what}; the plugin is ignored", CocomixWarning, stacklevel=2)
            continue
        try:
            cls = ep.load()
        except Exception as e:  # the plugin's own import errors, of any type
            warnings.warn(f"{where}: cannot be loaded ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})",
                          CocomixWarning, stacklevel=2)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Method)) or cls.name != ep.name:
            warnings.warn(f"{where}: expected a cocomix.methods.Method subclass whose `name` is {ep.name!r}, got "
                          f"{getattr(cls, 'name', cls)!r}", CocomixWarning, stacklevel=2)
            continue
        methods[ep.name] = cls


def reset() -> None:
    """Scan the entry points again at the next unknown method name (for tests that install a plugin)."""
    global _loaded
    _loaded = False
