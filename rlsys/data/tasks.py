"""Prompt datasets: the synthetic addition task and user files, Parquet or JSON Lines, read by :func:`read_rows`.

A dataset row is (``id``, ``prompt`` or ``messages``, ``answer``): the id is stable across runs, so every sample can
be named as (prompt id, sample index, epoch) — see :class:`rlsys.types.Prompt`; ``messages`` is a conversation, a
list of {role, content} turns ending with a user turn. GSM8K's files are rows (``question``, ``answer``) whose
answer is a worked solution ending ``#### <number>`` (layout ``gsm8k``). Every row is checked as it is read
(:mod:`rlsys.data.checks`): a null cell never becomes the text "None".
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.data.checks import (
    NO_COLUMN,
    BadRow,
    DatasetError,
    check_cells,
    duplicate_ids,
    gsm8k_reference,
    require_usable,
    settle,
)
from rlsys.types import Prompt

__all__ = [
    "COLUMNS",
    "LAYOUTS",
    "MESSAGES_TYPE",
    "SUFFIXES",
    "DatasetError",
    "PromptStream",
    "Rows",
    "SYNTHETIC_OPS",
    "make_arithmetic_rows",
    "prompt_row",
    "read_prompts",
    "read_rows",
    "write_parquet",
]

COLUMNS = ("id", "prompt", "answer")  # and "messages", written only where a row is a conversation
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SUFFIXES = (".parquet", ".jsonl")  # the file formats read_rows reads, by the file's suffix
LAYOUTS = ("prompt", "gsm8k")  # the columns of a row: id/prompt|messages/answer, or GSM8K's question/answer


SYNTHETIC_OPS = {"synthetic_addition": ("+", "add"), "synthetic_multiplication": ("*", "mul")}  # task → (op, id)


def make_arithmetic_rows(num_digits: int, num_rows: int, seed: int, exclude: set[str] = frozenset(),
                         task: str = "synthetic_addition") -> list[dict]:
    """Unique problems ``a+b=`` (``synthetic_multiplication``: ``a*b=``) with operands of 1..num_digits digits; the
    answer is the decimal sum (product).

    Problems in ``exclude`` (by prompt text) are skipped, which keeps the held-out split disjoint from training.
    """
    op, tag = SYNTHETIC_OPS[task]
    rng = random.Random(seed)
    hi = 10**num_digits - 1
    max_unique = (hi + 1) ** 2 - len(exclude)
    if num_rows > max_unique:
        raise ValueError(f"cannot draw {num_rows} distinct {num_digits}-digit problems (only {max_unique} exist); "
                         "lower task.num_train/num_eval or raise task.num_digits")
    seen: set[str] = set(exclude)
    rows = []
    while len(rows) < num_rows:
        a, b = rng.randint(0, hi), rng.randint(0, hi)
        prompt = f"{a}{op}{b}="
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = a + b if op == "+" else a * b
        rows.append({"id": f"{tag}{num_digits}-{a}{op}{b}", "prompt": prompt, "answer": str(answer)})
    return rows


def prompt_row(prompt: Prompt) -> dict:
    """The row :func:`read_rows` reads back as ``prompt`` (a conversation keeps its turns; its prompt cell is null)."""
    if prompt.messages:
        return {"id": prompt.prompt_id, "prompt": None, "answer": prompt.answer,
                "messages": [{"role": role, "content": content} for role, content in prompt.messages]}
    return {"id": prompt.prompt_id, "prompt": prompt.text, "answer": prompt.answer}


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows with keys ``id``, ``prompt``, ``answer`` (and ``messages``: a list of {role, content}, or None) as
    Parquet. The messages column (list<struct<role, content>>) is written only if some row has a conversation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {col: [r[col] for r in rows] for col in COLUMNS}
    columns["prompt"] = pa.array(columns["prompt"], pa.string())  # typed: all null where every row is a conversation
    if any(r.get("messages") is not None for r in rows):
        columns["messages"] = pa.array([r.get("messages") for r in rows], MESSAGES_TYPE)
    table = pa.table(columns)
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
    rows: list[int]  # rows[i]: the 0-based row of ``file`` that prompts[i] came from (JSONL: its line)
    bad: list[BadRow]  # rows of this dataset that failed the cell checks
    has_ids: bool  # the file has an id column (messages then name a row's id too)

    def subset(self, indices: list[int]) -> Rows:
        """Prompts ``indices`` (positions in ``prompts``), with their rows; no bad rows."""
        return Rows(self.file, [self.prompts[i] for i in indices], [self.rows[i] for i in indices], [], self.has_ids)

    def without(self, bad: list[BadRow]) -> list[Prompt]:
        """The prompts whose rows are not in ``bad``."""
        gone = {b.row for b in bad if b.file == self.file}
        return [p for p, r in zip(self.prompts, self.rows) if r not in gone]


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def _read_jsonl(path: Path) -> tuple[dict[str, list], list[int], list[BadRow]]:
    """A JSON Lines file's cells (see :func:`_read_cells`). Each line that is not a JSON object (invalid JSON, not
    UTF-8, an array, a number) is a bad row; a key absent from a line is a null cell of its column."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: not a readable file ({e})") from e
    records, rows, bad = [], [], []
    # Split the bytes at "\n" only: str.splitlines() also splits at U+2028 and other separators, which JSON strings
    # may hold unescaped.
    for row, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue  # a blank line (the one after the final newline, or between rows) holds no row
        try:
            value = json.loads(line.decode("utf-8-sig" if row == 0 else "utf-8"))  # utf-8-sig: a leading BOM
        except UnicodeDecodeError as e:
            bad.append(BadRow(file, row, "not a JSON object", f"not a JSON object (not UTF-8 text: "
                              f"{line[e.start:e.start + 1]!r} at byte {e.start + 1})"))  # 1-based, as JSON's column
            continue
        except json.JSONDecodeError as e:
            bad.append(BadRow(file, row, "not a JSON object", f"not a JSON object (invalid JSON: {e.msg} at column "
                              f"{e.colno})"))
            continue
        if not isinstance(value, dict):
            bad.append(BadRow(file, row, "not a JSON object", f"not a JSON object ({_JSON_TYPES[type(value)]}: a line "
                              "of a JSONL prompt file is one row, an object)"))
            continue
        records.append(value)
        rows.append(row)
    names = dict.fromkeys(key for record in records for key in record)
    return {name: [record.get(name) for record in records] for name in names}, rows, bad


def _read_cells(path: Path) -> tuple[dict[str, list], list[int], list[BadRow]]:
    """The file's columns (name → one cell per row read), the 0-based row of each (a JSONL file's line) and the
    rows that are not rows at all (JSONL lines that are not an object). Raises :class:`DatasetError` for an
    unreadable file or a suffix other than :data:`SUFFIXES`."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix != ".parquet":
        raise DatasetError(f"{path}: a prompt file is Parquet or JSON Lines, named by its suffix ({', '.join(SUFFIXES)}"
                           f"), not {suffix or 'without a suffix'}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
    return table.to_pydict(), list(range(table.num_rows)), []


def _missing_columns(path: Path, names: list[str], layout: str) -> None:
    """Raise a :class:`DatasetError` if the file lacks a column its layout needs."""
    if layout == "gsm8k":
        if missing := [c for c in ("question", "answer") if c not in names]:
            raise DatasetError(f"{path}: missing column(s) {missing}; a GSM8K file needs string columns 'question' "
                               f"and 'answer' (a worked solution whose final line is '#### <number>') (has {names})")
        return
    missing = [] if "prompt" in names or "messages" in names else ["prompt or messages"]
    missing += [] if "answer" in names else ["answer"]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; a prompt file needs a string column 'prompt' or a "
                           "column 'messages' (a conversation: a list of {role, content} turns ending with a user "
                           f"turn), and a string column 'answer' (optional: 'id') (has {names})")


def read_rows(path: str | Path, layout: str = "prompt") -> Rows:
    """Read a Parquet (``.parquet``) or JSON Lines (``.jsonl``, one object a line) file and check every cell.

    ``layout="prompt"``: columns ``prompt`` (a string) or ``messages`` (a conversation, one per row: a row with both
    set is bad) and ``answer``; ``layout="gsm8k"``: GSM8K's ``question`` and ``answer``, whose final line
    ``#### <number>`` is the reference (:func:`rlsys.data.checks.gsm8k_reference`). ``id`` is optional in both:
    without it a row's id is ``<file stem>-<row>``. Bad rows (and JSONL lines that are not an object) are returned,
    not raised; a missing file raises FileNotFoundError, and an unreadable file, an unknown suffix, a missing column
    and duplicate ids a :class:`DatasetError`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    data, lines, bad = _read_cells(path)
    file, has_ids = str(path), "id" in data
    if not lines:  # no row read: a JSONL file with no object has no columns to miss (require_usable says why)
        return Rows(file, [], [], bad, has_ids)
    _missing_columns(path, list(data), layout)
    absent = [NO_COLUMN] * len(lines)
    raw_ids = data["id"] if has_ids else [None] * len(lines)
    named = [(str(i), r) for r, i in zip(lines, raw_ids) if isinstance(i, (str, int)) and not isinstance(i, bool)]
    duplicate_ids(file, [i for i, _ in named], [r for _, r in named])
    column = "question" if layout == "gsm8k" else "prompt"
    messages = data.get("messages", absent) if layout == "prompt" else absent
    prompts, rows = [], []
    for row, raw_id, prompt, answer, turns in zip(lines, raw_ids, data.get(column, absent), data["answer"], messages):
        checked = check_cells(file, row, prompt, answer, raw_id, None if has_ids else f"{path.stem}-{row}", turns,
                              column)
        if layout == "gsm8k" and isinstance(checked, Prompt):
            checked = gsm8k_reference(file, row, checked, show_id=has_ids)
        if isinstance(checked, BadRow):
            bad.append(checked)
        else:
            prompts.append(checked)
            rows.append(row)
    return Rows(file, prompts, rows, bad, has_ids)


def read_prompts(path: str | Path, bad_rows: str = "fail", layout: str = "prompt") -> list[Prompt]:
    """The prompts of a Parquet or JSONL file (see :func:`read_rows`). Bad rows raise one :class:`DatasetError`
    listing them (``bad_rows="fail"``) or are left out and logged (``"drop"``); a file with no usable row always
    raises. These are the cell checks only: the token checks need the policy's tokenizer
    (:func:`rlsys.prepare.prepare`)."""
    data = read_rows(path, layout)
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

    def state(self) -> dict:
        """Where the stream is, by prompt id rather than by position, so that a restore against a changed dataset is
        detected (:meth:`restore`): the epoch, the ids still to come in it in order, the given-back prompts (id and
        epoch) and the shuffling RNG's state. JSON-serialisable."""
        version, internal, gauss = self._rng.getstate()
        return {"epoch": self.epoch, "remaining": [self._prompts[i].prompt_id for i in self._order],
                "requeued": [[p.prompt_id, p.epoch] for p in self._requeued],
                "rng": [version, list(internal), gauss]}

    def prompts_for(self, keys: list) -> list[Prompt]:
        """The prompts of ``(prompt id, epoch)`` pairs, in order; ValueError for an id the prompts do not have."""
        index = {p.prompt_id: p for p in self._prompts}
        if missing := [pid for pid, _ in keys if pid not in index]:
            raise ValueError(f"{len(missing)} prompt id(s) of the checkpoint are not in the training prompts (the "
                             f"dataset changed), e.g. {', '.join(map(repr, missing[:3]))}")
        return [replace(index[pid], epoch=epoch) for pid, epoch in keys]

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`; raises ValueError naming the ids the state has and the prompts do not (the
        dataset changed since the state was taken)."""
        requeued = self.prompts_for(state["requeued"])  # checks every id
        self.prompts_for([(pid, 0) for pid in state["remaining"]])
        index = {p.prompt_id: i for i, p in enumerate(self._prompts)}
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self.epoch = state["epoch"]
        self._order = [index[pid] for pid in state["remaining"]]
        self._requeued = requeued
