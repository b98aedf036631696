"""Benchmark: the weight sync from the learner to the rollout workers, against a plain memory copy (issue 13, part 3).

For each model size (random weights: a tiny Llama built from ``model.hidden_size`` etc., no warm-up) and each number
of rollout workers, the real actors of a run (a DeepSpeed learner, HF rollout workers, a local Ray) sync
``--repeats`` times through the controller's own path: ``Learner.get_weights`` (rank 0 gathers the full state dict
to host numpy arrays and returns it, so Ray stores it once in the object store), then
:meth:`rlsys.rollout_pool.RolloutPool.sync` (every worker's ``update_weights`` gets that one object). Reported
(medians), in seconds:

- **gather + store**: from the ``get_weights`` call to its result being in the object store;
- **store** (estimate): ``ray.put`` of a dict of the same arrays from this process, the same serialisation path;
  gather ≈ the difference;
- **transfer**: a worker's ``update_weights`` call minus the load it reports (argument fetch from the object store
  and Ray's call overhead; on one machine the object store is shared memory);
- **load**: the seconds the worker reports from the weights' arrival to loaded in its engine (slowest worker);
- **sync**: gather + store + the slowest worker's call, what ``sync/seconds`` logs in a run (median, and the
  range over the repeats).

GB/s is the weights' bytes (float32) over the sync's seconds, and "of copy" that figure over a single-threaded
``np.copyto`` of the same bytes on this machine (median of 3). Usage::

    python benchmarks/weight_sync.py [--sizes 4M 50M 500M] [--workers 1 2] [--repeats 3] [--smoke]

``--smoke``: the 4 M model, one worker, one sync — that the script works, not a measurement (CI runs it).
Figures depend on the machine and its load; results go to benchmarks/results/weight_sync.{md,json} (not with
--smoke). The 500 M model needs about 16 GB of memory with 2 workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# name → (hidden, intermediate, layers, heads); parameters ≈ layers · (4 h² + 3 h i), the character vocabulary's
# embeddings are negligible
SIZES = {
    "4M": (256, 768, 4, 4),
    "50M": (768, 2304, 6, 12),
    "500M": (1536, 4608, 16, 12),
}


def copy_gbps(nbytes: int, runs: int = 3) -> float:
    """Single-threaded memory copy bandwidth (GB/s) for ``nbytes``: the median of ``runs`` ``np.copyto``."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        np.copyto(dst, src)
        seconds.append(time.perf_counter() - start)
    return nbytes / statistics.median(seconds) / 1e9


def sync_rows(size: str, workers: int, repeats: int, root: Path) -> dict:
    """One configuration's medians (see the module docstring), from real actors on a local Ray."""
    import ray
    from run_actors import run_actors

    from rlsys.config import load_config

    hidden, intermediate, layers, heads = SIZES[size]
    cfg = load_config(None, [
        f"output.root={root}/runs", f"output.cache_dir={root}/cache", "output.progress_bar=false", "warmup.steps=0",
        f"model.hidden_size={hidden}", f"model.intermediate_size={intermediate}", f"model.num_layers={layers}",
        f"model.num_heads={heads}", f"rollout.num_workers={workers}", "task.num_train=64", "task.num_eval=8"])
    with run_actors(cfg) as (_, actors, pool):
        rounds = []
        for version in range(1, repeats + 2):  # the first round warms up (allocations, first fetch) and is dropped
            start = time.perf_counter()
            ref = actors.learners[0].get_weights.remote()
            ray.wait([ref], fetch_local=False)
            gathered = time.perf_counter()
            acks = pool.sync(ref, version)
            calls, loads = {}, {}
            pending = {ack: w for w, ack in acks}
            while pending:
                [done], _ = ray.wait(list(pending))
                calls[pending[done]] = time.perf_counter() - gathered
                loads[pending.pop(done)] = ray.get(done)
            rounds.append({"gather_store_s": gathered - start, "call_s": max(calls.values()),
                           "sync_s": gathered - start + max(calls.values()),
                           "load_s": max(loads.values()),
                           "transfer_s": max(calls[w] - loads[w] for w in calls)})
            del ref
        state = ray.get(actors.learners[0].get_weights.remote())
        nbytes = sum(a.nbytes for a in state.values())
        params = sum(a.size for a in state.values())
        puts = []
        for _ in range(repeats):
            start = time.perf_counter()
            ref = ray.put(state)
            puts.append(time.perf_counter() - start)
            del ref
        del state
    rounds = rounds[1:]
    row = {"size": size, "parameters_m": params / 1e6, "gb": nbytes / 1e9, "workers": workers, "repeats": repeats,
           **{k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
           "store_s": statistics.median(puts), "copy_gbps": copy_gbps(nbytes),
           "sync_s_min": min(r["sync_s"] for r in rounds), "sync_s_max": max(r["sync_s"] for r in rounds)}
    row["sync_gbps"] = nbytes / row["sync_s"] / 1e9
    row["of_copy"] = row["sync_gbps"] / row["copy_gbps"]
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.workers, args.repeats = ["4M"], [1], 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for workers in args.workers:
                rows.append(sync_rows(size, workers, args.repeats, Path(tmp)))

    from results_io import markdown_table, save

    table = markdown_table(
        f"Weight sync, learner → rollout workers (float32, 1 learner, HF engines, object store; median of "
        f"{args.repeats}; {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')})",
        ["model", "GB", "workers", "gather + store s", "store s (est.)", "transfer s", "load s", "sync s",
         "sync s min-max",
         "sync GB/s", "copy GB/s", "of copy"],
        [[f"{r['parameters_m']:.1f} M", f"{r['gb']:.3f}", r["workers"], f"{r['gather_store_s']:.3f}",
          f"{r['store_s']:.3f}", f"{r['transfer_s']:.3f}", f"{r['load_s']:.3f}", f"{r['sync_s']:.3f}",
          f"{r['sync_s_min']:.3f}-{r['sync_s_max']:.3f}",
          f"{r['sync_gbps']:.2f}", f"{r['copy_gbps']:.2f}", f"{r['of_copy']:.0%}"] for r in rows])
    save("weight_sync", table, rows, smoke=args.smoke)


if __name__ == "__main__":
    main()
