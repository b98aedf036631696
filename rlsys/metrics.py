"""Metrics sinks: TensorBoard event files and a JSONL file, written side by side with the same keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter


class MetricsWriter:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def log(self, step: int, scalars: dict[str, float], histograms: dict[str, list[float]] | None = None) -> None:
        for key, value in scalars.items():
            if value is not None and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        for key, values in (histograms or {}).items():
            if values:
                self.tb.add_histogram(key, np.asarray(values, dtype=np.float64), step)
        record = {"step": step, **{k: (v if v is None or math.isfinite(v) else None) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self._jsonl.close()
