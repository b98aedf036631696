"""Prompt datasets: the synthetic addition task and user Parquet files, both read back through pyarrow.

A dataset row is (``id``, ``prompt``, ``answer``): the id is stable across runs, so every sample can be named as
(prompt id, sample index, epoch) — see :class:`rlsys.types.Prompt`.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.types import Prompt

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


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a Parquet file with string columns ``prompt`` and ``answer`` (``id`` optional: row index)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    table = pq.read_table(path)
    missing = {"prompt", "answer"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; a prompt file needs string columns "
                         f"'prompt' and 'answer' (has {table.column_names})")
    data = table.to_pydict()
    ids = data.get("id") or [f"{path.stem}-{i}" for i in range(table.num_rows)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: column 'id' has duplicates; prompt ids must be unique")
    return [Prompt(prompt_id=str(i), text=str(p), answer=str(a))
            for i, p, a in zip(ids, data["prompt"], data["answer"])]


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
        return Prompt(prompt_id=p.prompt_id, text=p.text, answer=p.answer, epoch=self.epoch)

    def requeue(self, prompts: list[Prompt]) -> None:
        """Give prompts back (their generation was lost); they are handed out again before new ones."""
        self._requeued.extend(reversed(prompts))
