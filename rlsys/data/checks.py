"""Load-time checks of prompt datasets: which rows cannot train, and why — before anything heavy starts.

Two kinds, both pure functions over rows (and a tokenizer):

* cell checks (:func:`check_cells`), right after a file is read: null, empty or non-text ``id``/``prompt``/
  ``answer`` cells. Numbers are accepted as answers and ids (``7`` → ``"7"``, ``12.0`` → ``"12"``: integer
  answer columns are common, and pandas turns an integer column with a gap into floats); a prompt must be text.
* token checks (:func:`check_tokens`), once the policy's tokenizer exists: a prompt longer than the context
  leaves for generation, and a prompt or answer with characters the tokenizer maps to its unknown token.

Each bad row is a :class:`BadRow` naming its file and row (numbered from 0, as pandas and pyarrow number them).
:func:`settle` applies ``task.bad_rows``: ``fail`` raises one :class:`DatasetError` listing them; ``drop`` logs
them and returns the count per reason. Rows that break the file as a whole (missing columns, duplicate ids, an
unreadable file) are always a :class:`DatasetError`: dropping cannot tell which of two duplicates is meant.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlsys.data.chat import PromptFormat
from rlsys.types import Prompt

log = logging.getLogger(__name__)

MAX_LISTED = 20  # bad rows spelled out in one error or log message; the rest are counted

# The reasons a row is bad: the keys of Prepared.dropped_rows.
REASONS = (
    "null id", "non-string id", "empty id",
    "null prompt", "non-string prompt", "empty prompt",
    "null answer", "non-string answer", "empty answer",
    "prompt too long", "unknown characters in prompt", "unknown characters in answer",
)


class DatasetError(ValueError):
    """A prompt dataset that cannot train as it is; the message names the file, the rows and what to change."""


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int  # 0-based row of ``file``
    reason: str  # one of REASONS
    detail: str  # the sentence a user reads
    prompt_id: str | None = None  # the row's id, when the file has an id column

    def __str__(self) -> str:
        named = f" (id {self.prompt_id!r})" if self.prompt_id is not None else ""
        return f"{self.file} row {self.row}{named}: {self.detail}"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _number_text(value: Any) -> str | None:
    """A number as the text a reward compares (``7``, ``12.0`` → ``"12"``, ``0.5``); None if not a finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def check_cells(file: str, row: int, prompt: Any, answer: Any, raw_id: Any = None, default_id: str | None = None
                ) -> Prompt | BadRow:
    """The row as a :class:`Prompt`, or the first thing wrong with it (id, then prompt, then answer). A file
    without an id column passes ``default_id`` instead of ``raw_id``."""
    shown = None
    if default_id is not None:
        prompt_id = default_id
    elif raw_id is None:
        return BadRow(file, row, "null id", "id is null")
    elif isinstance(raw_id, str):
        if not raw_id.strip():
            return BadRow(file, row, "empty id", f"id is {raw_id!r} (empty)")
        prompt_id = shown = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        prompt_id = shown = str(raw_id)
    else:
        return BadRow(file, row, "non-string id", f"id is {_describe(raw_id)}, not a string or an integer")
    if prompt is None:
        return BadRow(file, row, "null prompt", "prompt is null", shown)
    if not isinstance(prompt, str):
        return BadRow(file, row, "non-string prompt", f"prompt is {_describe(prompt)}, not a string", shown)
    if not prompt.strip():
        return BadRow(file, row, "empty prompt", f"prompt is {prompt!r} (empty or whitespace only)", shown)
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return BadRow(file, row, "null answer", "answer is null", shown)
    if isinstance(answer, str):
        text = answer
    elif (text := _number_text(answer)) is None:
        return BadRow(file, row, "non-string answer", f"answer is {_describe(answer)}, not a string or a finite number",
                      shown)
    if not text.strip():
        return BadRow(file, row, "empty answer", f"answer is {text!r} (empty or whitespace only): a reference "
                      "answer is needed to score samples", shown)
    return Prompt(prompt_id=prompt_id, text=prompt, answer=text)


def duplicate_ids(file: str, ids: list[str], rows: list[int]) -> None:
    """Raise a :class:`DatasetError` naming every id that occurs more than once, with its rows."""
    where: dict[str, list[int]] = {}
    for i, row in zip(ids, rows):
        where.setdefault(i, []).append(row)
    dups = {i: r for i, r in where.items() if len(r) > 1}
    if dups:
        def rows_of(r: list[int]) -> str:
            return ", ".join(map(str, r[:MAX_LISTED])) + (f", … ({len(r)} rows)" if len(r) > MAX_LISTED else "")

        listed = [f"{i!r} (rows {rows_of(r)})" for i, r in list(dups.items())[:MAX_LISTED]]
        more = f" and {len(dups) - MAX_LISTED} more" if len(dups) > MAX_LISTED else ""
        raise DatasetError(f"{file}: column 'id' has duplicates; prompt ids must be unique: {', '.join(listed)}{more}"
                           " (task.bad_rows=drop does not drop duplicates: which row is meant is unclear)")


def _unknown_chars(tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int]) -> str | None:
    """The characters of ``text`` that became the unknown token, as a user reads them (None if none did). The
    unknown token's own string written literally in the text is not a loss."""
    unk_id, unk = tokenizer.unk_token_id, tokenizer.unk_token
    if unk_id is None or unk_id not in ids:
        return None
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        spans = [text[s:e] for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk_id]
        lost = [s for s in spans if s != unk]
        return ", ".join(map(repr, dict.fromkeys(lost))) if lost else None
    literal = text.count(unk) if unk else 0  # a slow tokenizer has no offsets: compare counts
    lost_count = ids.count(unk_id) - literal
    return f"{lost_count} span(s) (a slow tokenizer cannot say which)" if lost_count > 0 else None


def check_tokens(file: str, rows: list[int], prompts: list[Prompt], fmt: PromptFormat,
                 max_prompt_tokens: int | None, limit_note: str = "", show_ids: bool = True) -> list[BadRow]:
    """Rows whose prompt is longer than ``max_prompt_tokens`` (None: unchecked) or whose prompt or answer has
    characters the tokenizer cannot represent. Prompts are counted exactly as the rollout worker encodes them:
    ``fmt.encode(prompt)`` (chat template and special tokens included)."""
    bad = []
    tokenizer = fmt.tokenizer
    answer_ids = tokenizer([p.answer for p in prompts])["input_ids"] if prompts else []
    for row, p, a_ids in zip(rows, prompts, answer_ids):
        shown = p.prompt_id if show_ids else None
        text = fmt.render(p)
        ids = fmt.encode_text(text)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            bad.append(BadRow(file, row, "prompt too long", f"prompt is {len(ids)} tokens; at most "
                              f"{max_prompt_tokens} fit{f' ({limit_note})' if limit_note else ''}", shown))
        elif lost := _unknown_chars(tokenizer, text, ids):
            bad.append(BadRow(file, row, "unknown characters in prompt", "prompt has characters the tokenizer "
                              f"cannot represent (they would become {tokenizer.unk_token}): {lost}", shown))
        elif lost := _unknown_chars(tokenizer, p.answer, a_ids):
            bad.append(BadRow(file, row, "unknown characters in answer", "answer has characters the tokenizer "
                              f"cannot represent (they would become {tokenizer.unk_token}): {lost}", shown))
    return bad


def in_file_order(bad: list[BadRow]) -> list[BadRow]:
    """``bad`` by row within each file, the files in the order they first appear."""
    first = {f: i for i, f in reversed(list(enumerate(b.file for b in bad)))}
    return sorted(bad, key=lambda b: (first[b.file], b.row))


def count_reasons(bad: list[BadRow]) -> dict[str, int]:
    return dict(Counter(b.reason for b in bad).most_common())


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())


def format_bad(bad: list[BadRow]) -> str:
    lines = [f"  {b}" for b in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)


def settle(bad: list[BadRow], mode: str) -> dict[str, int]:
    """Apply ``task.bad_rows``: ``fail`` raises one :class:`DatasetError` listing ``bad``; ``drop`` logs them and
    returns the count per reason (the caller leaves them out)."""
    if not bad:
        return {}
    counts = count_reasons(bad)
    if mode == "fail":
        raise DatasetError(f"{len(bad)} bad row(s) in the prompt data (rows numbered from 0); fix them, or set "
                           f"task.bad_rows=drop to train without them:\n{format_bad(bad)}\nby reason: "
                           f"{_counts_text(counts)}")
    if mode != "drop":
        raise ValueError(f"task.bad_rows={mode!r}: use fail or drop")
    log.warning("task.bad_rows=drop: leaving out %d bad row(s) (%s):\n%s", len(bad), _counts_text(counts),
                format_bad(bad))
    return counts


def require_usable(label: str, kept: int, bad: list[BadRow], total: int) -> None:
    """Raise a :class:`DatasetError` when a dataset has no row left to use."""
    if kept:
        return
    if not total:
        raise DatasetError(f"{label} has no usable rows: it has no rows at all")
    raise DatasetError(f"{label} has no usable rows: all {total} were dropped ({_counts_text(count_reasons(bad))})")
