"""Every main algorithm learns on the embedded default task, in a short synchronous run (η = 0: the test is about
learning, not asynchrony, and a synchronous run does not depend on the machine's timing).

What each test asserts is chosen from the run-to-run spread that ``benchmarks/learning_spread.py`` measures over
seeds (a different CPU gives a different warm-up and different float results, as a different seed does; figures
in the README's Results):

- *The training reward rises* in every run — the mean over the last WINDOW steps against the first (≈ 4 000
  samples each, so its own noise is < 0.01): by at least MIN_REWARD_RISE, far below every rise measured.
- *Held-out accuracy does not collapse*: it falls by at most MAX_ACC_DROP (a collapse, as reward hacking gives,
  takes it from 33 % to 0.5–8 %: see the RM test). In 200 steps its change is no reliable signal for a recipe:
  PPO-GAE's critic starts untrained, and over three seeds its gain was −2.5, +13.5 and +3.5 points; Dr. GRPO from
  the same 33 % warm-up went to 23.5 % in one run of 2026-12-01 and passed a 5-point bound in CI on the same kind
  of machine that day (why the runs differ is not established), with the training reward rising each time. One
  evaluation of 200 problems near 30 % has a sampling standard deviation of 3.2 points by itself.
- *Held-out accuracy rises on average* over the eight default-task runs (the seven recipes and the composite
  reward, 200 steps each from the same warm-up): their mean gain must be positive. In one run of each on
  2026-12-03 (from 35 %) the gains were +19.5 (DAPO), +8.5, +7.5, +6.5, +6.5, +4.5, +3 and +0.5 points, mean +7.1.
  Weak by design — it fails only when the runs on average do not improve held-out accuracy at all. The strong
  held-out check is the calculator's below (+40 points asked, +84 measured). GRPO's held-out gain over a longer
  run (+21.5, +33 and +38 points in 800 steps over three seeds, ``benchmarks/results/learning_spread_grpo800.md``)
  is a benchmark, not a test: that one run was a third of this module's work, and its longest wait.
- GSPO has no run of its own: with one update per batch on fresh samples its sequence-level ratio is 1 and its
  gradient is GRPO's (its 200 steps' rewards were those of GRPO's first 200, to the last digit, in the runs of
  2026-12-03); its ratio, clipping and IS weights are pinned by the unit tests of tests/test_algos.py.

- *The calculator example learns to use its tool* (CALCULATOR_STEPS): held-out accuracy on 2-digit multiplication
  and the held-out tool-call rate both rise by MIN_TOOL_GAIN, against +84.5 to +87.5 points (accuracy: 11-14 % →
  98.5-99.5 %) and +88 to +94 points (tool calls: 6-12 % → 98-100 %) measured over three seeds.

The runs are independent and synchronous, and a synchronous run keeps about one core busy, so they run as
``rlsys`` processes of their own, PARALLEL_RUNS at a time (:func:`learning_runs`), each test asserting on its run
as soon as that has finished. Their results do not depend on the order or the overlap: η = 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from rlsys.config import DEFAULT_CONFIG, EXAMPLES, RLConfig, algo_recipe, load_config
from rlsys.controller import RunSummary
from rlsys.metrics import read_metrics
from rlsys.train import train

STEPS = 200
RM_STEPS = 4000  # preference-training steps of the reward model in the RM run (~60 s on 2 idle cores)
WINDOW = 30  # steps averaged at each end of the run for the training reward's rise
MIN_REWARD_RISE = 0.02  # mean training reward, last WINDOW steps − first WINDOW steps
MAX_ACC_DROP = 0.15  # held-out accuracy (200 problems) may not fall by more than this (measured: −9.5 pts)
MIN_MEAN_ACC_GAIN = 0.0  # mean held-out accuracy gain of the default-task runs (measured: +0.071)
PARALLEL_RUNS = max(1, min(2, os.cpu_count() or 1))  # runs at once: about one busy core each
RUN_TIMEOUT_S = 2400  # one run, far above the ~100-300 s they take on 2 loaded cores: a hang fails, never waits
# A test waits for its run: for the run ahead of it in the pool, then its own, each bounded by RUN_TIMEOUT_S (the
# suite's 900 s per test would cut that wait short on a loaded machine). The pooled test waits for all of its runs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * RUN_TIMEOUT_S)]


CALCULATOR_STEPS = 40  # the calculator example's run, synchronous
MIN_TOOL_GAIN = 0.4  # held-out accuracy and tool-call rate, each (measured: +0.845 to +0.94)


def calculator_config(root: str | Path, *overrides: str) -> RLConfig:
    """The calculator example (configs/examples/calculator.yaml: the tiny model, 2-digit multiplication, a calculator
    tool) for CALCULATOR_STEPS synchronous steps, held-out accuracy and tool-call rate before and after."""
    return load_config([EXAMPLES / "calculator.yaml"], [
        f"output.root={root}/runs", f"output.cache_dir={root}/rlsys-cache", "output.progress_bar=false",
        f"train.num_steps={CALCULATOR_STEPS}", "train.eval_every=0", "train.max_staleness=0", *overrides])


def tool_call_rates(run_dir: Path) -> tuple[float, float]:
    """Held-out tool-call rate (eval/tool_call_rate) at the first and the last evaluation."""
    rates = [m["eval/tool_call_rate"] for m in read_metrics(run_dir) if "eval/tool_call_rate" in m]
    return rates[0], rates[-1]


def learning_config(root: str | Path, algo: str | None = None, *overrides: str) -> RLConfig:
    """The learning tests' run: the default task and model, warmed up to 30 % held-out accuracy (a target, not a
    step count: where a step count lands varies with the CPU and the seed, from 45 % to 76 % in the spread
    measured for 500 steps), then ``STEPS`` synchronous steps of ``algo``'s recipe (None: the default, GRPO).
    ``root``: runs and cache."""
    files = [DEFAULT_CONFIG, *([algo_recipe(algo)] if algo else [])]
    return load_config(files, [
        f"output.root={root}/runs", f"output.cache_dir={root}/rlsys-cache", "output.progress_bar=false",
        "warmup.steps=1000", "warmup.target_accuracy=0.3", f"train.num_steps={STEPS}", "train.eval_every=0",
        "train.max_staleness=0", *overrides])


def learning_gains(summary: RunSummary, run_dir: Path, reward_key: str = "reward/mean") -> tuple[float, float, float]:
    """(held-out accuracy before, after, the training reward's rise: mean of the last WINDOW steps' ``reward_key``
    minus the first WINDOW steps')."""
    acc = summary.eval_accuracy
    rewards = [m[reward_key] for m in read_metrics(run_dir) if m.get(reward_key) is not None]
    return acc[min(acc)], acc[max(acc)], float(np.mean(rewards[-WINDOW:]) - np.mean(rewards[:WINDOW]))


def assert_learned(summary: RunSummary, run_dir: Path, what: str, reward_key: str = "reward/mean",
                   max_acc_drop: float | None = MAX_ACC_DROP) -> None:
    before, after, rise = learning_gains(summary, run_dir, reward_key)
    assert set(summary.eval_accuracy) == {0, summary.steps}
    assert rise > MIN_REWARD_RISE, f"{what}: the training reward ({reward_key}) rose by only {rise:.3f}"
    if max_acc_drop is not None:
        assert after >= before - max_acc_drop, f"{what}: held-out accuracy fell, {before:.3f} → {after:.3f}"


def assert_trained_every_step(run_dir: Path, steps: int) -> None:
    trained = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(trained) == steps and all(np.isfinite(m["train/loss"]) for m in trained)


RECIPES = ["grpo", "dr_grpo", "dapo", "ppo_gae", "rloo", "reinforce_pp", "cispo"]
COMPOSITE_REWARD = (  # correctness + format + length penalty
    "reward.components=[{name: correct, fn: addition_exact}, "
    "{name: digits, fn: regex_format, weight: 0.2, params: {pattern: '[0-9]+'}}, "
    "{name: short, fn: length_penalty, weight: 0.1, params: {target: 3, tolerance: 1}}]",
    "reward.correct_component=correct")
# Each learning run: name → (recipe or None for the default GRPO, overrides). "rm" first trains its reward model.
RUNS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    **{algo: (algo, ()) for algo in RECIPES},
    "composite": (None, COMPOSITE_REWARD),
    "rm": (None, ("reward.correct_component=correct",)),
    "calculator": (None, ()),  # calculator_config
}
DEFAULT_TASK_RUNS = [*RECIPES, "composite"]  # same task and warm-up: their held-out gains are pooled
RUN_OF_TEST = {"test_held_out_accuracy_rises_on_average_over_the_default_task_runs": DEFAULT_TASK_RUNS,
               "test_composite_reward_learns_and_logs_every_term": "composite",
               "test_a_trained_reward_model_as_the_only_reward_is_what_rl_optimises": "rm",
               "test_the_calculator_example_learns_to_call_its_tool": "calculator"}


def run_learning(name: str, root: str, out: str) -> None:
    """One learning run (``RUNS[name]``), in a process of its own: writes {summary, run_dir, ...} as JSON to ``out``.
    The RM run trains its reward model first (RM_STEPS steps on right vs. near-miss answers) and adds
    ``rm_held_out`` (its pairwise accuracy on held-out pairs) and ``rm_version``."""
    algo, overrides = RUNS[name]
    extra: dict = {}
    if name == "rm":
        from rlsys.prepare import prepare
        from rlsys.rewards.models import SequenceClassifierRM
        from rlsys.rewards.preference import addition_preference_pairs, pairwise_accuracy, train_preference_rm

        prepared = prepare(learning_config(root))
        rm_dir = Path(root) / "rm"
        pairs = [pair for seed in range(4) for pair in addition_preference_pairs(prepared.train_prompts, seed)]
        stats = train_preference_rm(rm_dir, prepared.model_dir, pairs, steps=RM_STEPS, lr=1e-3, batch_size=64)
        extra = {"rm_version": stats["version"], "rm_held_out": pairwise_accuracy(
            SequenceClassifierRM(str(rm_dir)), addition_preference_pairs(prepared.eval_prompts, 1))}
        overrides = (*overrides, f"reward.components=[{{name: rm, model: {{kind: classifier, paths: ['{rm_dir}']}}}}, "
                                 "{name: correct, fn: addition_exact, weight: 0.0}]")
    cfg = calculator_config(root, f"output.run_name={name}") if name == "calculator" else \
        learning_config(root, algo, f"output.run_name={name}", *overrides)
    summary, run_dir = train(cfg)
    Path(out).write_text(json.dumps({"summary": asdict(summary), "run_dir": str(run_dir), **extra}))


def _launch(name: str, root: Path) -> dict:
    out, log = root / f"{name}.json", root / f"{name}.log"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_learning import "
            f"run_learning; run_learning({name!r}, {str(root)!r}, {str(out)!r})")
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                              timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = log.read_text()[-4000:]
        raise AssertionError(f"learning run {name!r} exited {done.returncode}; the end of its log ({log}):\n{tail}")
    result = json.loads(out.read_text())
    s = result["summary"]
    result["summary"] = RunSummary(**{**s, "eval_accuracy": {int(k): v for k, v in s["eval_accuracy"].items()}})
    result["run_dir"] = Path(result["run_dir"])
    return result


@pytest.fixture(scope="module")
def learning_runs(request, tmp_path_factory):
    """name → Future of the run's result ({summary: RunSummary, run_dir: Path, ...}) for the runs the selected tests
    of this module need, started PARALLEL_RUNS at a time in test order. The warm-up is built here first, once, so
    the runs share its cached checkpoint instead of each building it."""
    from rlsys.prepare import prepare

    def runs_of(item) -> list[str]:
        if hasattr(item, "callspec"):
            return [item.callspec.params["algo"]]
        runs = RUN_OF_TEST[item.originalname]
        return runs if isinstance(runs, list) else [runs]

    needed = list(dict.fromkeys(r for i in request.session.items if i.module is request.module for r in runs_of(i)))
    root = tmp_path_factory.mktemp("learning")
    prepare(learning_config(root))
    pool = ThreadPoolExecutor(PARALLEL_RUNS)
    request.addfinalizer(lambda: pool.shutdown(wait=False, cancel_futures=True))
    futures: dict[str, Future] = {name: pool.submit(_launch, name, root) for name in needed}
    return futures


@pytest.mark.parametrize("algo", RECIPES)
def test_algorithm_raises_the_training_reward_without_hurting_held_out_accuracy(learning_runs, algo):
    run = learning_runs[algo].result()
    assert_learned(run["summary"], run["run_dir"], algo)
    assert_trained_every_step(run["run_dir"], STEPS)


def test_held_out_accuracy_rises_on_average_over_the_default_task_runs(learning_runs):
    gains = {}
    for name in DEFAULT_TASK_RUNS:
        run = learning_runs[name].result()
        before, after, _ = learning_gains(run["summary"], run["run_dir"])
        gains[name] = after - before
    shown = ", ".join(f"{name} {gain:+.3f}" for name, gain in gains.items())
    assert np.mean(list(gains.values())) > MIN_MEAN_ACC_GAIN, f"held-out accuracy gains: {shown}"


def test_composite_reward_learns_and_logs_every_term(learning_runs):
    """Correctness + format + length penalty: the run learns on the correctness term, and each term is logged
    and stored per sample."""
    import pyarrow.parquet as pq

    run = learning_runs["composite"].result()
    summary, run_dir = run["summary"], run["run_dir"]
    assert_learned(summary, run_dir, "composite reward", reward_key="reward/correct")
    last_step = [m for m in read_metrics(run_dir) if "train/loss" in m][-1]
    for term in ("correct", "digits", "short"):
        assert f"reward/{term}" in last_step and f"reward/{term}_failures" in last_step
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    for r in rows[:50]:
        terms = dict(r["reward_components"])
        assert set(terms) == {"correct", "digits", "short"}
        assert r["reward"] == pytest.approx(terms["correct"] + 0.2 * terms["digits"] + 0.1 * terms["short"], abs=1e-6)


def test_a_trained_reward_model_as_the_only_reward_is_what_rl_optimises(learning_runs):
    """RLHF in miniature: a reward model trained here from scratch on preference pairs (right vs. near-miss
    answers) ranks held-out pairs, and as the only reward RL raises its score. The exact-answer check rides along
    as a weight-0 monitor term, logged every step; every sample records the RM version that scored it.

    What RL does to the *task* is not asserted, because it is reward over-optimisation (Gao et al. 2023), measured:
    this 64×2 RM cannot add (it scores "102" above "82" for 9+73), and in the runs of 2026-12-01 held-out accuracy
    went 33 % → 18.5 % and 21.5 % with the test's RM (25 % with algo.kl_coef=0.1), and to 0.5–8 % with RMs also
    trained on pairs of the policy's own samples: the policy learns the RM's blind spots. (Earlier runs on other
    CPUs saw 57.5 % → 64.5 % and 45 % → 18.5 %.) The README's Results say so."""
    import pyarrow.parquet as pq

    run = learning_runs["rm"].result()
    summary, run_dir = run["summary"], run["run_dir"]
    assert run["rm_held_out"] >= 0.8, f"the reward model ranks only {run['rm_held_out']:.0%} of held-out pairs right"
    assert set(summary.eval_accuracy) == {0, summary.steps}
    steps = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(steps) == STEPS and all(m["reward/correct"] == m["reward/correct"] for m in steps)  # monitor logged
    rm = np.array([m["reward/rm"] for m in steps])
    first, last = rm[:WINDOW], rm[-WINDOW:]
    # The rise in standard errors of the difference of the two means, from the run's own step-to-step spread
    # (measured: 3.0 to 9.2 over five runs with different RMs and seeds; a reward RL ignored would stay within noise).
    se = np.sqrt(first.var(ddof=1) / WINDOW + last.var(ddof=1) / WINDOW)
    assert last.mean() - first.mean() > 2 * se, \
        f"the reward model's score did not rise: {first.mean():.3f} → {last.mean():.3f} (standard error {se:.3f})"
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    assert {dict(r["reward_versions"])["rm"] for r in rows} == {run["rm_version"]}
    assert all(r["reward"] == pytest.approx(dict(r["reward_components"])["rm"], abs=1e-6) for r in rows[:50])


def test_the_calculator_example_learns_to_call_its_tool(learning_runs):
    """2-digit multiplication, which the tiny model cannot do alone, with a calculator it can call: RL raises the
    rate at which it calls the tool and, with it, held-out accuracy."""
    run = learning_runs["calculator"].result()
    summary, run_dir = run["summary"], run["run_dir"]
    assert_trained_every_step(run_dir, CALCULATOR_STEPS)
    before, after, _ = learning_gains(summary, run_dir)
    calls_before, calls_after = tool_call_rates(run_dir)
    assert after >= before + MIN_TOOL_GAIN, f"held-out accuracy {before:.3f} → {after:.3f}"
    assert calls_after >= calls_before + MIN_TOOL_GAIN, f"tool-call rate {calls_before:.3f} → {calls_after:.3f}"
