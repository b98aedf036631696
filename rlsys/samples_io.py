"""Samples on disk: every group that leaves the buffer is appended to a Parquet file, one row per sample."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.types import Group

SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("sample_index", pa.int32()),
    ("epoch", pa.int32()),
    ("version", pa.int32()),  # policy version that generated the sample
    ("learner_version", pa.int32()),  # policy version it trained (or was dropped at; -1: dropped on arrival)
    ("dropped", pa.string()),  # "" when trained, else why it was not
    ("prompt", pa.string()),
    ("answer", pa.string()),
    ("response", pa.string()),
    ("finish_reason", pa.string()),
    ("reward", pa.float32()),
    ("reward_error", pa.string()),
    ("reward_components", pa.map_(pa.string(), pa.float32())),  # each reward term's value (NaN: it failed)
    ("reward_notes", pa.map_(pa.string(), pa.string())),  # the reason a term gave with its value, where it gave one
    ("reward_versions", pa.map_(pa.string(), pa.string())),  # model-based term → version of the model that scored
    ("response_ids", pa.list_(pa.int32())),
    ("behaviour_logprobs", pa.list_(pa.float32())),
])


class SampleLog:
    """Appends row groups to one Parquet file; ``close`` writes the footer (until then the file is unreadable)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.path, SCHEMA)

    def write(self, groups: list[Group], learner_version: int, dropped: str | list[str]) -> None:
        """Append ``groups``' samples; ``dropped`` is why none of them trained, or one reason per sample ("": it
        trained)."""
        samples = [(g, s) for g in groups for s in g.samples]
        reasons = [dropped] * len(samples) if isinstance(dropped, str) else dropped
        if len(reasons) != len(samples):
            raise ValueError(f"{len(reasons)} reasons for {len(samples)} samples")
        rows = [
            {
                "prompt_id": g.prompt.prompt_id, "sample_index": s.sample_index, "epoch": s.epoch,
                "version": s.version, "learner_version": learner_version, "dropped": why,
                "prompt": g.prompt.text, "answer": g.prompt.answer, "response": s.response_text,
                "finish_reason": s.finish_reason, "reward": s.reward, "reward_error": s.reward_error,
                "reward_components": list(s.reward_components.items()),
                "reward_notes": list(s.reward_notes.items()),
                "reward_versions": list(s.reward_versions.items()),
                "response_ids": s.response_ids.tolist(), "behaviour_logprobs": s.behaviour_logprobs.tolist(),
            }
            for (g, s), why in zip(samples, reasons)
        ]
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))

    def close(self) -> None:
        self._writer.close()
