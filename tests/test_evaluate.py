"""`rlsys eval`: greedy pass@1 and the unbiased pass@k (Chen et al. 2021) from sampled completions, with the
per-problem results written to Parquet; a real warmed-up checkpoint, no Ray."""

from __future__ import annotations

from math import comb

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides

from rlsys.cli import main
from rlsys.evaluate import pass_at_k


def test_pass_at_k_is_the_unbiased_estimator():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # the chance that k of the n samples, drawn without replacement, hold a correct one
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 is the fraction correct
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - comb(197, 100) / comb(200, 100))  # no overflow
    for bad in [(4, 5, 1), (4, 2, 0), (4, 2, 5), (3, -1, 1)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            pass_at_k(*bad)


def test_eval_reports_pass_at_k_and_writes_each_problem(tiny_policy, tmp_path, capsys):
    model_dir, _ = tiny_policy
    out = tmp_path / "eval.parquet"
    assert main(["eval", model_dir, "--samples", "6", "--k", "1", "--k", "4", "--output", str(out),
                 *tiny_overrides(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    greedy = float(lines[-1].rsplit(" ", 1)[1].rstrip("%")) / 100
    shown = {int(line.split()[0][5:]): float(line.rsplit(" ", 1)[1].rstrip("%")) / 100
             for line in lines if line.startswith("pass@")}
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 40 and all(len(r["samples"]) == len(r["sample_correct"]) == 6 for r in rows)
    # the figures printed are the per-problem estimates averaged, and each problem's from its own samples
    for k in (1, 4):
        assert shown[k] == pytest.approx(sum(r[f"pass@{k}"] for r in rows) / 40, abs=5e-4)
        assert all(r[f"pass@{k}"] == pytest.approx(pass_at_k(6, sum(r["sample_correct"]), k)) for r in rows)
    assert greedy == pytest.approx(sum(r["greedy_correct"] for r in rows) / 40, abs=5e-4)
    assert all(r["pass@4"] >= r["pass@1"] for r in rows)
    # the warmed-up policy gets some right and some wrong: the figures measure something
    assert 0 < shown[1] < shown[4] <= 1
    assert main(["eval", model_dir, "--samples", "2", "--k", "3", *tiny_overrides(tmp_path)]) == 2
    assert "--k must be between 1 and --samples (2)" in capsys.readouterr().err
