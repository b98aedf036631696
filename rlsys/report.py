"""``rlsys inspect RUN_DIR``: what a finished run did, read back from its files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from rlsys.metrics import METRICS_FILE, read_metrics
from rlsys.samples_io import read_samples

_LISTED = 10  # rows and prompts listed one by one; summary.json has them all


def inspect_run(run_dir: str | Path, num_examples: int = 3) -> str:
    """A plain-text account of a run: accuracy over versions, and every sample trained, dropped or failed."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}; give the directory of an rlsys run "
                                "(<output.root>/<run_name>)")
    lines = [f"run {run_dir}"]
    try:
        metrics = read_metrics(run_dir)
    except (ValueError, OSError) as e:
        metrics = []
        lines.append(f"metrics.jsonl is unreadable: {e}")
    curve = [(m["step"], m["eval/accuracy"]) for m in metrics if m.get("eval/accuracy") is not None]
    if curve:
        lines.append("held-out accuracy by version: " + ", ".join(f"{v}: {a:.1%}" for v, a in curve))
    calls = [(m["step"], m["eval/tool_call_rate"], m["eval/turns"]) for m in metrics if "eval/tool_call_rate" in m]
    if calls:  # a multi-turn run
        lines.append("held-out tool-call rate (turns per trajectory) by version: "
                     + ", ".join(f"{v}: {r:.1%} ({t:.2f})" for v, r, t in calls))
    lines += _left_out(run_dir)
    samples_path = run_dir / "samples.parquet"
    if not samples_path.exists():
        lines.append("no samples.parquet (output.save_samples=false, or the run did not start)")
        return "\n".join(lines)
    try:
        rows = read_samples(samples_path).to_pylist()
    except (pa.ArrowException, OSError) as e:  # a damaged part (a killed run leaves only whole ones)
        lines.append(f"samples.parquet is unreadable: {e}")
        return "\n".join(lines)
    trained = [r for r in rows if not r["dropped"]]
    lines.append(f"samples: {len(rows)} logged, {len(trained)} trained")
    for reason, count in Counter(r["dropped"] for r in rows if r["dropped"]).most_common():
        lines.append(f"  not trained ({reason}): {count}")
    staleness = Counter(r["learner_version"] - r["version"] for r in trained)
    lines.append("staleness of trained samples (versions: count): "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(staleness.items())))
    failures = Counter(r["reward_error"] for r in rows if r["reward_error"])
    lines.append(f"reward failures: {sum(failures.values())}")
    for error, count in failures.most_common(5):
        lines.append(f"  {count} × {error}")
    last = max((r["learner_version"] for r in trained), default=None)
    if last is not None:
        lines.append(f"examples trained at version {last}:")
        for r in [r for r in trained if r["learner_version"] == last][:num_examples]:
            lines.append(f"  {r['prompt']!r} → {r['response']!r} (answer {r['answer']!r}, reward {r['reward']:.2f})")
    return "\n".join(lines)


def _left_out(run_dir: Path) -> list[str]:
    """Lines on the data rows and prompts the run left out, from its summary.json (none: the run did not end)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return ["no summary.json: the run did not finish (it was stopped or killed)"]
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"it holds a {type(summary).__name__}, not an object")
    except (ValueError, OSError) as e:  # a run killed while writing it, a full disk
        return [f"summary.json is unreadable ({e}): the data rows and prompts the run left out are not known"]
    rows = [f"{r['file']} row {r['row']}: {r['detail']}" for r in summary.get("dropped_row_list", [])]
    prompts = [f"{p['prompt_id']}: {p['error']}" for p in summary.get("failed_prompts", [])]
    return (_listed("data rows left out (task.bad_rows=drop)", rows, "dropped_row_list")
            + _listed("prompts dropped after failed requests", prompts, "failed_prompts"))


def _listed(title: str, entries: list[str], key: str) -> list[str]:
    if not entries:
        return []
    more = [f"  ... and {len(entries) - _LISTED} more (summary.json: {key})"] if len(entries) > _LISTED else []
    return [f"{title}: {len(entries)}", *(f"  {e}" for e in entries[:_LISTED]), *more]
