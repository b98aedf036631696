"""Metrics sinks: TensorBoard event files and a JSONL file, written side by side with the same keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records a run's :class:`MetricsWriter` wrote, in order (``step`` plus its scalars; non-finite → None).

    A last line without its newline is a record cut short by a killed run, and is left out; any other line that
    is not a JSON object raises ValueError naming it."""
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: "" after the last newline, or a cut record
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not a JSON record: {e}") from None
    return records


def json_safe(value):
    """``value`` with every NaN or infinite float (also inside dicts, lists and tuples) replaced by None: JSON has
    no NaN, and ``json.dumps`` would write a bare ``NaN`` that strict readers (JavaScript, many tools) reject."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class MetricsWriter:
    """TensorBoard events and ``metrics.jsonl``. ``resume=(records, version)`` continues a run from a checkpoint:
    the file is cut back to its first ``records`` records (the checkpoint's), and TensorBoard hides the events of
    steps after ``version`` that the discarded timeline wrote (``purge_step``)."""

    def __init__(self, run_dir: str | Path, resume: tuple[int, int] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # torch: only where a run writes, not for reading

        self.run_dir = Path(run_dir)
        path = self.run_dir / METRICS_FILE
        self.records = 0
        if resume is not None:
            kept = path.read_text().splitlines(keepends=True)[:resume[0]] if path.exists() else []
            path.write_text("".join(kept))
            self.records = len(kept)
        # TensorBoard keeps the steps up to the version resumed at, or none when no record is kept (a run that
        # starts over: its version-0 evaluation is logged again)
        purge = None if resume is None else resume[1] + 1 if resume[0] else 0
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
        self._jsonl = open(path, "a", buffering=1)

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, list[float]] | None = None) -> None:
        for key, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        for key, values in (histograms or {}).items():
            if values:
                self.tb.add_histogram(key, np.asarray(values, dtype=np.float64), step)
        self._jsonl.write(json.dumps(json_safe({"step": step, **scalars}), allow_nan=False) + "\n")
        self.records += 1

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self._jsonl.close()


def trajectory_totals(samples: list) -> dict[str, int]:
    """Counts over the multi-turn ``samples`` (:class:`rlsys.types.Sample`; {} if none is a trajectory), which add
    up across batches: trajectories, turns, tool calls, trajectories with a tool call, environment failures."""
    trajectories = [s.trajectory for s in samples if s.trajectory is not None]
    if not trajectories:
        return {}
    return {"trajectories": len(trajectories), "turns": sum(len(t.turns) for t in trajectories),
            "tool_calls": sum(t.tool_calls for t in trajectories),
            "with_tool_calls": sum(t.tool_calls > 0 for t in trajectories),
            "env_failures": sum(t.error is not None for t in trajectories)}


def trajectory_scalars(totals: dict[str, int], prefix: str) -> dict[str, float]:
    """``<prefix>/turns`` (actions per trajectory, mean), ``<prefix>/tool_calls`` (mean), ``<prefix>/tool_call_rate``
    (the fraction of trajectories with at least one tool call) and ``<prefix>/env_failures`` (count) from
    :func:`trajectory_totals`; none without trajectories."""
    n = totals.get("trajectories", 0)
    if not n:
        return {}
    return {f"{prefix}/turns": totals["turns"] / n, f"{prefix}/tool_calls": totals["tool_calls"] / n,
            f"{prefix}/tool_call_rate": totals["with_tool_calls"] / n,
            f"{prefix}/env_failures": float(totals["env_failures"])}


def reward_scalars(rewards: list[float], lengths: list[int], components: dict[str, list[float]]) -> dict[str, float]:
    """Reward metrics over a window of samples (NaN rewards: failed).

    ``reward/mean``, ``reward/failures`` (count) and ``reward/failure_rate``; ``reward/length_corr``, the Pearson
    correlation of reward with response length (reward hacking often shows up as reward tracking length; NaN when
    either is constant); and with more than one reward term, per term ``reward/<term>`` (mean: its trend over
    steps shows which term the policy is exploiting), ``reward/<term>_failures`` and ``reward/<term>_failure_rate``
    (for a judge, the rate of answers that did not parse).
    """
    r = np.asarray(rewards, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64)
    ok = np.isfinite(r)
    out = {"reward/mean": float(r[ok].mean()) if ok.any() else math.nan, "reward/failures": float((~ok).sum()),
           "reward/failure_rate": float((~ok).mean()) if r.size else math.nan, "reward/length_corr": math.nan}
    if ok.sum() > 2 and np.ptp(r[ok]) > 0 and np.ptp(n[ok]) > 0:
        out["reward/length_corr"] = float(np.corrcoef(r[ok], n[ok])[0, 1])
    if len(components) > 1:  # a single term is reward/mean itself
        for name, values in components.items():
            v = np.asarray(values, dtype=np.float64)
            out[f"reward/{name}"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
            out[f"reward/{name}_failures"] = float(np.isnan(v).sum())
            out[f"reward/{name}_failure_rate"] = float(np.isnan(v).mean()) if v.size else math.nan
    return out
