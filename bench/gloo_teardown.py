"""How often two gloo processes hang in `destroy_process_group` after `check_same_step` refuses a resume: the
measurement behind pyproject's torch floor (README, "Other torch versions"; no paper equation).

Each round spawns two ranks (file:// rendezvous) that resume from different steps: both raise the one-line
`CheckpointError`, then leave the process group. On torch 2.6 and 2.7 the gloo process group's destructor joins
its worker threads while holding the GIL, and a worker still freeing the all-reduce's tensor needs the GIL: a
deadlock (pytorch#154976). A round that has not ended after `--timeout` seconds is counted as hung and killed.
Prints one JSON line, the last on stdout: torch version, rounds, hung.

    PYTHONPATH=src python bench/gloo_teardown.py --rounds 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _rank(rank: int, init: str, steps: list[int]) -> None:
    import torch.distributed as dist

    from cocomix.errors import CheckpointError
    from cocomix.train import distributed as dd

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        dd.check_same_step(steps[rank], dd.DistContext(rank, 2, rank), torch.device("cpu"))
    except CheckpointError:
        pass  # expected: the ranks disagree
    finally:
        dist.destroy_process_group()


def one_round(timeout: float) -> bool:
    """True when the round hung (its processes are killed)."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_rank, args=(f"file://{tmp}/rendezvous", [3, 0]), nprocs=2, join=False,
                                 start_method="spawn")
        start = time.monotonic()
        while not ctx.join(timeout=1):
            if time.monotonic() - start > timeout:
                for p in ctx.processes:
                    p.kill()
                return True
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds after which a round counts as hung")
    args = p.parse_args()
    hung = sum(one_round(args.timeout) for _ in range(args.rounds))
    print(json.dumps({"torch": torch.__version__, "rounds": args.rounds, "hung": hung}))


if __name__ == "__main__":
    main()
