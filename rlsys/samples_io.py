"""Samples on disk: every group that leaves the buffer is logged, one row per sample, in a Parquet dataset.

The log is a directory (``samples.parquet/``) of complete Parquet files, ``part-00000.parquet``, … — each written
whole to a hidden temporary name and renamed — so a run that is killed leaves every part it finished readable
(``pyarrow.parquet.read_table(directory)`` reads them all; hidden files are skipped) and loses at most the rows
buffered since the last part (``FLUSH_S`` seconds or ``FLUSH_ROWS`` rows). A single file written as it goes would
be unreadable without the footer it gets at the very end.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.types import Group, Trajectory

SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("sample_index", pa.int32()),
    ("epoch", pa.int32()),
    ("version", pa.int32()),  # policy version that generated the sample (its oldest token's: see token_versions)
    ("learner_version", pa.int32()),  # policy version it trained (or was dropped at; -1: dropped on arrival)
    ("dropped", pa.string()),  # "" when trained, else why it was not
    ("prompt", pa.string()),  # the dataset's prompt (a conversation's last user turn)
    ("prompt_rendered", pa.string()),  # what the policy read: the chat template's rendering, or the raw text
    ("answer", pa.string()),
    ("response", pa.string()),
    ("finish_reason", pa.string()),  # stop | length
    ("stop_reason", pa.string()),  # the end token or stop string that stopped it ("" at length)
    ("reward", pa.float32()),
    ("reward_error", pa.string()),
    ("reward_components", pa.map_(pa.string(), pa.float32())),  # each reward term's value (NaN: it failed)
    ("reward_notes", pa.map_(pa.string(), pa.string())),  # the reason a term gave with its value, where it gave one
    ("reward_versions", pa.map_(pa.string(), pa.string())),  # model-based term → version of the model that scored
    ("prompt_ids", pa.list_(pa.int32())),  # the token ids the policy read (rendered, special tokens included)
    ("response_ids", pa.list_(pa.int32())),
    ("behaviour_logprobs", pa.list_(pa.float32())),
    ("loss_mask", pa.list_(pa.uint8())),  # 1: a token the policy generated; null: all of them (Sample.loss_mask)
    # The policy version that sampled each response token: one version throughout, except where weights were
    # updated while the sample was generated (rollout.inflight_weight_updates)
    ("token_versions", pa.list_(pa.int32())),
    # A multi-turn sample's turns (null for a single completion): each action, the environment's observation,
    # its step reward and done flag, and its info as JSON; env_error: why the environment failed the trajectory
    ("turns", pa.list_(pa.struct([("action", pa.string()), ("observation", pa.string()), ("env_reward", pa.float32()),
                                  ("done", pa.bool_()), ("info", pa.string())]))),
    ("first_observation", pa.string()),
    ("env_error", pa.string()),
])


def _trajectory_columns(trajectory: Trajectory | None) -> dict:
    if trajectory is None:
        return {"turns": None, "first_observation": None, "env_error": None}
    turns = [{"action": t.action, "observation": t.observation, "env_reward": t.reward, "done": t.done,
              "info": json.dumps(t.info, default=repr)} for t in trajectory.turns]
    return {"turns": turns, "first_observation": trajectory.first_observation, "env_error": trajectory.error}


FLUSH_S = 10.0  # a part is written once the oldest row buffered is this old ...
FLUSH_ROWS = 8192  # ... or this many rows are buffered


class SampleLog:
    """Buffers rows and writes them as the next complete part of the dataset directory ``path``; ``close`` writes
    the rest (and one empty part if there was nothing, so the log always reads back)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_file():  # a log from before parts (a single file): never silently mixed with new parts
            raise FileExistsError(f"{self.path} is a file; the sample log is a directory of parts")
        self.path.mkdir(parents=True, exist_ok=True)
        # A log continued in the same run directory appends after its parts.
        self._parts = max((int(p.stem.split("-")[1]) + 1 for p in self.path.glob("part-*.parquet")), default=0)
        self._rows: list[dict] = []
        self._since = time.monotonic()

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
                "prompt": g.prompt.text, "prompt_rendered": g.prompt_text, "answer": g.prompt.answer,
                "response": s.response_text, "finish_reason": s.finish_reason, "stop_reason": s.stop_reason,
                "reward": s.reward, "reward_error": s.reward_error,
                "reward_components": list(s.reward_components.items()),
                "reward_notes": list(s.reward_notes.items()),
                "reward_versions": list(s.reward_versions.items()),
                "prompt_ids": s.prompt_ids.tolist(), "response_ids": s.response_ids.tolist(),
                "behaviour_logprobs": s.behaviour_logprobs.tolist(),
                "loss_mask": None if s.loss_mask is None else s.loss_mask.tolist(),
                "token_versions": [s.version] * len(s.response_ids) if s.token_versions is None else
                s.token_versions.tolist(),
                **_trajectory_columns(s.trajectory),
            }
            for (g, s), why in zip(samples, reasons)
        ]
        if not self._rows:
            self._since = time.monotonic()
        self._rows += rows
        if len(self._rows) >= FLUSH_ROWS or time.monotonic() - self._since >= FLUSH_S:
            self.flush()

    @property
    def parts(self) -> int:
        """How many parts the log has on disk."""
        return self._parts

    def flush(self) -> None:
        """Write the buffered rows as the next part (nothing if none are buffered)."""
        if self._rows:
            self._write_part(self._rows)
            self._rows = []

    def close(self) -> None:
        self.flush()
        if not self._parts:
            self._write_part([])

    def _write_part(self, rows: list[dict]) -> None:
        name = f"part-{self._parts:05d}.parquet"
        tmp = self.path / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the rename must not become visible before the data
        tmp.replace(self.path / name)
        self._parts += 1


def read_samples(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The sample log at ``path`` read whole (or ``columns`` of it) against today's :data:`SCHEMA`: a log continued
    from a run of an older rlsys has parts without the newer columns, which read as nulls there (pyarrow would
    otherwise take the first part's schema for every part and drop them)."""
    return pq.read_table(path, schema=SCHEMA, columns=columns)


def set_aside_parts(path: str | Path, keep: int, name: str) -> int:
    """Move the parts after the first ``keep`` of the sample log at ``path`` into its subdirectory ``_<name>/``,
    which readers skip (pyarrow ignores names that start with ``_``); returns how many were moved.

    For a resume: the rows a run logged after the checkpoint it continues from belong to a timeline that the
    resume discards (their prompts are generated and trained again), and would otherwise count twice. A run that
    goes back to the same checkpoint twice sets each timeline aside in its own directory (``_<name>-2/``, ...)."""
    path = Path(path)
    later = sorted(p for p in path.glob("part-*.parquet") if int(p.stem.split("-")[1]) >= keep)
    if later:
        aside = next(d for n in itertools.count(1) if not (d := path / (f"_{name}" + (f"-{n}" if n > 1 else ""))
                                                          ).exists())
        aside.mkdir()
        for part in later:
            part.rename(aside / part.name)
    return len(later)
