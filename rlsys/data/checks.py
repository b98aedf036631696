"""Load-time checks of prompt datasets: which rows cannot train, and why — before anything heavy starts.

Two kinds, both pure functions over rows (and a tokenizer):

* cell checks (:func:`check_cells`), right after a file is read: null, empty or non-text ``id``/``prompt``/
  ``answer`` cells, a conversation (``messages``) that is not a list of {role, content} turns ending with a user
  turn, a row with both a prompt and a conversation; for GSM8K (:func:`gsm8k_reference`), a solution without a
  final ``#### <number>`` line. Numbers are accepted as answers and ids (``7`` → ``"7"``, ``12.0`` → ``"12"``:
  integer answer columns are common, and pandas turns an integer column with a gap into floats); a prompt must be
  text. (A JSONL line that is not a JSON object is a bad row too: :func:`rlsys.data.tasks.read_rows`.)
* token checks (:func:`check_tokens`), once the policy's tokenizer exists: a prompt longer than the context
  leaves for generation, and a prompt or answer with characters the tokenizer maps to its unknown token.

Each bad row is a :class:`BadRow` naming its file and row (numbered from 0, as pandas and pyarrow number them; in a
JSONL file, the row is the 0-based line).
:func:`settle` applies ``task.bad_rows``: ``fail`` raises one :class:`DatasetError` listing them; ``drop`` logs
them and returns the count per reason. Rows that break the file as a whole (missing columns, duplicate ids, an
unreadable file) are always a :class:`DatasetError`: dropping cannot tell which of two duplicates is meant.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlsys.data.chat import PromptFormat
from rlsys.types import Prompt

log = logging.getLogger(__name__)

MAX_LISTED = 20  # bad rows spelled out in one error or log message; the rest are counted

# The reasons a row is bad: the keys of Prepared.dropped_rows.
REASONS = (
    "not a JSON object",
    "null id", "non-string id", "empty id",
    "null prompt", "non-string prompt", "empty prompt",
    "null messages", "bad messages", "prompt and messages",
    "null answer", "non-string answer", "empty answer",
    "no #### line", "bad #### number",
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


ROLES = ("system", "user", "assistant", "tool")  # the roles a conversation turn may have

class _NoColumn:
    def __repr__(self) -> str:
        return "NO_COLUMN"


# The cell of a column the file does not have (a null cell is None): check_cells tells "no prompt column" from "a
# null prompt", which a file with both prompt and messages columns has on every conversation row.
NO_COLUMN: Any = _NoColumn()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_shown(value)}"


def _number_text(value: Any) -> str | None:
    """A number as the text a reward compares (``7``, ``12.0`` → ``"12"``, ``0.5``); None if not a finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _conversation(messages: Any) -> tuple[tuple[str, str], ...] | str:
    """A ``messages`` cell as ((role, content), ...), or the sentence saying what is wrong with it. Keys of a turn
    other than role and content (``name``, ``tool_calls``) are ignored."""
    if not isinstance(messages, list | tuple):
        return f"messages is {_describe(messages)}, not a list of {{role, content}} turns"
    if not messages:
        return "messages is an empty list: a conversation needs a user turn"
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            return f"messages[{i}] is {_describe(turn)}, not a {{role, content}} mapping"
        role, content = turn.get("role"), turn.get("content")
        if role is None:
            return f"messages[{i}] has no role"
        if role not in ROLES:
            return f"messages[{i}] has role {_shown(role)}; a role is one of {', '.join(ROLES)}"
        if content is None:
            return f"messages[{i}] ({role}) has no content"
        if not isinstance(content, str):
            return f"messages[{i}] ({role}) has content {_describe(content)}, not a string"
        if not content.strip():
            return f"messages[{i}] ({role}) has content {content!r} (empty or whitespace only)"
        turns.append((role, content))
    if all(role != "user" for role, _ in turns):
        return (f"messages has no user turn (roles {', '.join(r for r, _ in turns)}): a prompt must ask the model "
                "something")
    if turns[-1][0] != "user":
        return (f"the last turn, messages[{len(turns) - 1}], is a {turns[-1][0]} turn, not a user turn: a prompt must "
                "end with what the model is asked")
    return tuple(turns)


def check_cells(file: str, row: int, prompt: Any, answer: Any, raw_id: Any = None, default_id: str | None = None,
                messages: Any = NO_COLUMN, prompt_column: str = "prompt") -> Prompt | BadRow:
    """The row as a :class:`Prompt`, or the first thing wrong with it (id, then prompt or conversation, then
    answer). A file without an id column passes ``default_id`` instead of ``raw_id``; ``prompt`` and ``messages``
    are :data:`NO_COLUMN` where the file has no such column. A row has a prompt or a conversation, not both: a
    conversation's :attr:`Prompt.text` is the content of its last turn, a user turn. ``prompt_column`` is the
    prompt's column as messages name it (GSM8K's is ``question``)."""
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
    turns: tuple[tuple[str, str], ...] = ()
    if messages is not NO_COLUMN and messages is not None:
        if prompt is not NO_COLUMN and prompt is not None:
            return BadRow(file, row, "prompt and messages", f"both {prompt_column} and messages are set: a row is "
                          f"either a {prompt_column} or a conversation; leave one of them null", shown)
        checked = _conversation(messages)
        if isinstance(checked, str):
            return BadRow(file, row, "bad messages", checked, shown)
        turns, prompt = checked, checked[-1][1]
    elif prompt is NO_COLUMN:
        return BadRow(file, row, "null messages", "messages is null", shown)
    elif prompt is None:
        both = f"{prompt_column} and messages are both null (a row needs one of them)"
        return BadRow(file, row, "null prompt", both if messages is not NO_COLUMN else f"{prompt_column} is null",
                      shown)
    elif not isinstance(prompt, str):
        return BadRow(file, row, "non-string prompt", f"{prompt_column} is {_describe(prompt)}, not a string", shown)
    elif not prompt.strip():
        return BadRow(file, row, "empty prompt", f"{prompt_column} is {prompt!r} (empty or whitespace only)", shown)
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
    return Prompt(prompt_id=prompt_id, text=prompt, answer=text, messages=turns)


# GSM8K's final answer: an integer or decimal, optionally signed, with or without thousands separators ("1,080").
_GSM8K_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")


def gsm8k_reference(file: str, row: int, prompt: Prompt, show_id: bool = False) -> Prompt | BadRow:
    """A GSM8K row (``prompt.answer`` is the worked solution) with its reference answer: the number on the
    solution's final line ``#### <number>``, thousands separators and a ``+`` sign removed (``#### 1,080`` →
    ``"1080"``, ``#### -3`` → ``"-3"``); the worked steps are not kept. A BadRow if there is no such line, or its
    number is not one (a unit, a ``$``, a malformed separator such as ``1,00``)."""
    shown = prompt.prompt_id if show_id else None
    last = prompt.answer.rstrip().rsplit("\n", 1)[-1].strip()
    if not last.startswith("####"):
        return BadRow(file, row, "no #### line", f"answer's final line is {_shown(last)}, not '#### <number>' (GSM8K "
                      "marks the reference answer so)", shown)
    number = last[4:].strip()
    if not _GSM8K_NUMBER.fullmatch(number):
        return BadRow(file, row, "bad #### number", f"answer's final line {_shown(last)} has no number after '####' "
                      "(digits, optionally signed, with thousands commas or decimals)", shown)
    return replace(prompt, answer=number.replace(",", "").removeprefix("+"))


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
