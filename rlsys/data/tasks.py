"""Prompt datasets: the synthetic addition task and user Parquet files, both read back through pyarrow.

A dataset row is (``id``, ``prompt``, ``answer``): the id is stable across runs, so every sample can be named as
(prompt id, sample index, epoch) — see :class:`rlsys.types.Prompt`. Every row is checked as it is read
(:mod:`rlsys.data.checks`): a null cell never becomes the text "None".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.data.checks import BadRow, DatasetError, check_cells, duplicate_ids, require_usable, settle
from rlsys.types import Prompt

__all__ = ["COLUMNS", "DatasetError", "PromptStream", "Rows", "make_addition_rows", "read_prompts", "read_rows",
           "write_parquet"]

COLUMNS = ("id", "prompt", "answer")


def make_addition_rows(num_digits: int, num_rows: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Unique problems ``a+b=`` with operands of 1..num_digits digits; the answer is the decimal sum.

    Problems in ``exclude`` (by prompt text) are skipped, which keeps the held-out split disjoint from training.
    """
    rng = random.Random(seed)
    hi = 10**num_digits - 1
    max_unique = (hi + 1) ** 2 - len(exclude)
    if num_rows > max_unique:
        raise ValueError(f"cannot draw {num_rows} distinct {num_digits}-digit additions (only {max_unique} exist); "
                         "lower task.num_train/num_eval or raise task.num_digits")
    seen: set[str] = set(exclude)
    rows = []
    while len(rows) < num_rows:
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        prompt = f"{a}+{b}="
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"id": f"add{num_digits}-{a}+{b}", "prompt": prompt, "answer": str(a + b)})
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({col: [r[col] for r in rows] for col in COLUMNS})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


@dataclass(frozen=True)
class Rows:
    """The usable prompts of one file, each with its row, and the rows that are not usable (see
    :mod:`rlsys.data.checks`). A held-out split keeps the rows of the file it was taken from."""

    file: str
    prompts: list[Prompt]
    rows: list[int]  # rows[i]: the 0-based row of ``file`` that prompts[i] came from
    bad: list[BadRow]  # rows of this dataset that failed the cell checks
    has_ids: bool  # the file has an id column (messages then name a row's id too)

    def subset(self, indices: list[int]) -> Rows:
        """Prompts ``indices`` (positions in ``prompts``), with their rows; no bad rows."""
        return Rows(self.file, [self.prompts[i] for i in indices], [self.rows[i] for i in indices], [], self.has_ids)

    def without(self, bad: list[BadRow]) -> list[Prompt]:
        """The prompts whose rows are not in ``bad``."""
        gone = {b.row for b in bad if b.file == self.file}
        return [p for p, r in zip(self.prompts, self.rows) if r not in gone]


def read_rows(path: str | Path) -> Rows:
    """Read a Parquet file with columns ``prompt`` and ``answer`` (``id`` optional: ``<file stem>-<row>``) and check
    every cell. Bad rows are returned, not raised; a missing file or column, an unreadable file and duplicate ids
    raise (:class:`DatasetError` for the last three)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
    missing = {"prompt", "answer"} - set(table.column_names)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}; a prompt file needs string columns "
                           f"'prompt' and 'answer' (has {table.column_names})")
    data = table.to_pydict()
    file, has_ids = str(path), "id" in data
    raw_ids = data["id"] if has_ids else [None] * table.num_rows
    named = [(str(i), r) for r, i in enumerate(raw_ids) if isinstance(i, (str, int)) and not isinstance(i, bool)]
    duplicate_ids(file, [i for i, _ in named], [r for _, r in named])
    prompts, rows, bad = [], [], []
    for row, (raw_id, prompt, answer) in enumerate(zip(raw_ids, data["prompt"], data["answer"])):
        checked = check_cells(file, row, prompt, answer, raw_id, None if has_ids else f"{path.stem}-{row}")
        if isinstance(checked, BadRow):
            bad.append(checked)
        else:
            prompts.append(checked)
            rows.append(row)
    return Rows(file, prompts, rows, bad, has_ids)


def read_prompts(path: str | Path, bad_rows: str = "fail") -> list[Prompt]:
    """The prompts of a Parquet file (see :func:`read_rows`). Bad rows raise one :class:`DatasetError` listing them
    (``bad_rows="fail"``) or are left out and logged (``"drop"``); a file with no usable row always raises. These
    are the cell checks only: the token checks need the policy's tokenizer (:func:`rlsys.prepare.prepare`)."""
    data = read_rows(path)
    settle(data.bad, bad_rows)
    require_usable(f"prompt file {data.file}", len(data.prompts), data.bad, len(data.prompts) + len(data.bad))
    return data.prompts


class PromptStream:
    """Endless, shuffled pass over prompts, one epoch after another; each handed-out prompt carries its epoch."""

    def __init__(self, prompts: list[Prompt], seed: int) -> None:
        if not prompts:
            raise ValueError("the training prompt set is empty")
        self._prompts = prompts
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self.epoch = -1
        self._requeued: list[Prompt] = []

    def next(self) -> Prompt:
        if self._requeued:
            return self._requeued.pop()
        if not self._order:
            self.epoch += 1
            self._order = list(range(len(self._prompts)))
            self._rng.shuffle(self._order)
        p = self._prompts[self._order.pop()]
        return replace(p, epoch=self.epoch)

    def requeue(self, prompts: list[Prompt]) -> None:
        """Give prompts back (their generation was lost); they are handed out again before new ones."""
        self._requeued.extend(reversed(prompts))
