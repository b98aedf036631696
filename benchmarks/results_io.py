"""Where benchmark results go: ``benchmarks/results/<name>.md`` (a Markdown table) and ``<name>.json`` (the rows)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def markdown_table(title: str, header: list[str], rows: list[list[object]]) -> str:
    """``# title``, then a Markdown table with one line per row of already formatted cells."""
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, cells)) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def save(name: str, table: str, rows: list | dict, smoke: bool = False) -> Path:
    """Write the table and the rows, print the table; returns the results folder (for further files). ``smoke``:
    a benchmark's ``--smoke`` run, which checks that the script works and is no measurement: print only."""
    if smoke:
        print(table)
        return RESULTS
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table if table.endswith("\n") else table + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return RESULTS
