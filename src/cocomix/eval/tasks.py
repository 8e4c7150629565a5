"""Running lm-evaluation-harness tasks on a cocomix run (`cocomix eval --tasks`; the paper's downstream tasks,
§3 Table 1; no paper equation).

`run_tasks` builds the adapter (`harness.CocomixLM`) and calls `lm_eval.simple_evaluate` with a `TaskManager`
that also scans `include_path` (local task YAML files, e.g. JSONL-backed tasks that need no network); when every
requested task is defined there, lm-eval's built-in task index (seconds to build) is skipped. Under torchrun it
first checks that lm-eval gathers through the adapter's collectives (`check_harness_version`), and an unknown
task next to a task file that is not valid YAML names that file (lm-eval skips such files); whatever lm-eval raises
while it builds the tasks (a `!function` module missing, an unknown output_type, a data file that does not parse)
is one ConfigError line naming the cause.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from cocomix.errors import CocomixError, ConfigError
from cocomix.eval.batch_size import DEFAULT_MAX
from cocomix.eval.harness import CocomixLM

# the first lm-eval whose evaluator gathers through the model's own collectives (`all_gather`, `gather_object`,
# `barrier`); earlier ones call `lm.accelerator`, which only their HF model has
DISTRIBUTED_SINCE = (0, 4, 12)


def check_harness_version() -> None:
    """Under torchrun, refuse an lm-eval older than DISTRIBUTED_SINCE in one line, not an AttributeError mid-run."""
    from importlib.metadata import PackageNotFoundError, version

    from cocomix.train import distributed as dd

    if dd.context_from_env().world_size == 1:
        return

    try:
        found = version("lm_eval")
    except PackageNotFoundError:  # imported from a source tree: nothing to compare
        return
    numbers = tuple(int(p) for p in re.findall(r"\d+", found)[:3])
    if numbers < DISTRIBUTED_SINCE:
        need = ".".join(map(str, DISTRIBUTED_SINCE))
        raise ConfigError(f"--tasks under torchrun: lm-eval {found} is installed; data-parallel evaluation needs "
                          f"lm-eval>={need} (pip install 'lm-eval>={need}'), or run without torchrun")


def run_tasks(run: str | Path, tasks: list[str], include_path: str | Path | None = None, limit: int | None = None,
              device: str = "cpu", dtype: str = "float32", batch_size: int | str = 8, data: str | None = None,
              log_samples: bool = False, max_batch_size: int = DEFAULT_MAX,
              max_length: int | None = None) -> dict[str, Any] | None:
    """lm_eval.simple_evaluate on a cocomix run (its result dict, plus `checkpoint`: the folder scored);
    `include_path` adds local task YAML folders; `max_length` is the most tokens one forward scores (default:
    the run's data.seq_len; `CocomixLM`). Under torchrun every rank scores its share of each task's
    documents; rank 0 returns the results of all of them, the other ranks None."""
    if not tasks:
        raise ConfigError("--tasks: expected comma-separated lm-eval task names")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: not a folder (expected a folder of lm-eval task YAML "
                          "files)")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("--tasks: lm-evaluation-harness is not installed (pip install lm-eval)") from None
    check_harness_version()
    if limit is not None and not 0 <= limit <= sys.maxsize:  # lm-eval slices with it
        raise ConfigError(f"--limit: expected a number in [0, {sys.maxsize}] (0: every example), got {limit}")
    limit = limit or None  # lm-eval reads 0 as "no example"
    lm = CocomixLM(run, data=data, device=device, dtype=dtype, batch_size=batch_size, max_batch_size=max_batch_size,
                   max_length=max_length)
    try:  # (the process group, under torchrun, is torn down whatever happens from here)
        manager = _task_manager(TaskManager, tasks, include_path)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            broken = _unreadable_task_file(include_path) if include_path else None
            raise ConfigError(f"--tasks: unknown task {unknown[0]!r} " + (
                f"({broken}, which lm-eval skips, may define it)" if broken else
                "(local task folders go in --include-path)"))
        from cocomix.train.fail_fast import FailFast

        with FailFast(lm._ctx):  # under torchrun any rank's error stops the others at once
            res = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                  log_samples=log_samples, batch_size=batch_size)
    finally:
        from cocomix.train import distributed as dd

        dd.teardown(lm._ctx)  # under torchrun (lm-eval's last collective was its gather on rank 0)
    if res is None:  # a rank other than 0 under torchrun: rank 0 holds the results
        return None
    res["checkpoint"] = str(lm.checkpoint)  # the checkpoint scored (a run directory's latest)
    return res


def _unreadable_task_file(folder: str | Path) -> str | None:
    """'FILE is not valid YAML (…)' for the first task file under `folder` that does not parse, else None
    (lm-eval logs such a file and goes on, so its task is then only "unknown"). lm-eval's own tags
    (`!function module.name`) are accepted as it reads them."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    for path in sorted(Path(folder).rglob("*.yaml")):
        try:
            yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader: builds no objects
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"{path} is not valid YAML ({first})"
    return None


def _task_manager(manager_cls: Any, tasks: list[str], include_path: str | Path | None) -> Any:
    """The lm-eval `TaskManager` that `tasks` need. Indexing lm-eval's own task folders reads ~15,000 YAML files
    (~11 s on 2 CPU cores); when every requested name is a task (not a group or tag, which may list built-in
    tasks) defined in `include_path`, a manager of that folder alone resolves them. (A local task named like a
    built-in one is then the local one; the full index of lm-eval 0.4.13 also prefers local definitions, older
    versions preferred the built-in ones: name local tasks apart.)"""
    manager = local = None
    if include_path:
        local = manager_cls(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_subtasks for t in tasks):
            manager = local
    if manager is None:
        manager = manager_cls(include_path=str(include_path) if include_path else None)
    for name in ("load", "load_task_or_group"):  # where lm-eval builds the tasks (0.4.13: `load`; earlier: both)
        if callable(getattr(manager, name, None)):
            setattr(manager, name, _one_line_errors(getattr(manager, name), tasks,
                                                    include_path if manager is local else None))
    return manager


def _one_line_errors(build: Any, tasks: list[str], include_path: str | Path | None) -> Any:
    """`build` (a TaskManager method that builds tasks from their YAML and loads their datasets) with what it
    raises said in one line as a ConfigError: a `!function` whose module is missing, an unknown output_type, a
    data file that does not parse, a hub dataset that cannot be downloaded. No model code runs while tasks are
    built, so any error there is the tasks'. `include_path`: the folder every task comes from, named in the line."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return build(*args, **kwargs)
        except CocomixError:
            raise
        except Exception as e:
            cause = f"{type(e).__name__}: {' '.join(str(e).split())}"
            if e.__cause__ is not None:  # e.g. datasets' DatasetGenerationError, whose cause names the file
                cause += f" ({type(e.__cause__).__name__}: {' '.join(str(e.__cause__).split())})"
            where = f" (task files in --include-path {include_path})" if include_path else ""
            raise ConfigError(f"--tasks {','.join(tasks)}: lm-eval could not build the task{'s' * (len(tasks) > 1)}"
                              f"{where}: {cause}") from e
    return wrapped
