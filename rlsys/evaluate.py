"""Held-out evaluation of a checkpoint: greedy pass@1 and sampled pass@k, scored by the run's reward. Single
completions need no Ray; with ``env.name`` set each completion is a trajectory (:mod:`rlsys.agent_loop`), whose
environments run in environment workers on a local Ray started here (or the one this process has joined).

pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1):
from n ≥ k samples of a problem of which c are correct, the chance that k drawn without replacement hold at least
one correct one, 1 − C(n−c, k) / C(n, k), averaged over problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlsys.actors.rollout import make_engine
from rlsys.config import EnvConfig, RewardConfig, RolloutConfig
from rlsys.data.chat import PromptFormat
from rlsys.engines.generation import GenerationEngine
from rlsys.rewards import RewardOutcome, RewardScorer
from rlsys.types import Prompt, Trajectory


def accuracy(rewards: np.ndarray) -> float:
    """Fraction of samples whose reward reached 1 (fully correct); a failed reward (NaN) counts as wrong.

    With a composite reward, pass the values of the correctness term (``RewardConfig.accuracy_term``)."""
    return float(np.mean(_correct(rewards)))


def _correct(values) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0) >= 1.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples with ``c`` correct (Chen et al. 2021), computed as the
    product 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms the large binomials. Raises ValueError unless
    0 ≤ c ≤ n and 1 ≤ k ≤ n."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass(frozen=True)
class ProblemResult:
    """One held-out problem: its greedy completion, and the sampled ones (empty without sampling)."""

    prompt: Prompt
    greedy: str  # the whole response (a trajectory's actions and observations)
    greedy_reward: float  # NaN: the reward failed
    greedy_correct: bool
    samples: list[str] = field(default_factory=list)
    sample_correct: list[bool] = field(default_factory=list)
    greedy_tool_calls: int = 0  # a trajectory's tool calls (0 for a single completion)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # pass@1 of greedy decoding
    pass_at: dict[int, float]  # k → mean unbiased pass@k over problems, from the sampled completions
    problems: list[ProblemResult]

    def write_parquet(self, path: str | Path) -> Path:
        """One row per problem: id, prompt, answer, the greedy completion with its reward and correctness, the
        samples with their correctness, and the problem's pass@k for each k."""
        path = Path(path)
        rows = [{"prompt_id": p.prompt.prompt_id, "prompt": p.prompt.text, "answer": p.prompt.answer,
                 "greedy": p.greedy, "greedy_reward": p.greedy_reward, "greedy_correct": p.greedy_correct,
                 "samples": p.samples, "sample_correct": p.sample_correct, "greedy_tool_calls": p.greedy_tool_calls,
                 **{f"pass@{k}": pass_at_k(len(p.samples), sum(p.sample_correct), k) for k in self.pass_at}}
                for p in self.problems]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(path)
        return path


def evaluate_checkpoint(model_dir: str, prompts: list[Prompt], fmt: PromptFormat, reward: RewardConfig,
                        rollout: RolloutConfig, num_samples: int = 0, ks: tuple[int, ...] = (),
                        batch_size: int = 256, env: EnvConfig | None = None) -> EvalResult:
    """Greedy decoding of ``model_dir`` on ``prompts`` (accuracy = pass@1), and with ``num_samples`` > 0 that many
    completions per problem sampled at ``rollout.temperature``, for pass@k at each k in ``ks`` (each ≤ num_samples).
    Prompts are encoded by ``fmt`` (built with ``model_dir``'s tokenizer, as :func:`rlsys.prepare.load_datasets`
    builds it) and completions stop as rollout workers stop (end tokens, ``rollout.stop``, at most
    ``rollout.max_new_tokens``); with ``env`` enabled each is a trajectory, scored as training scores one (an
    environment failure counts as wrong). Correct means the reward's correctness term reached 1. A checkpoint that
    does not load raises :class:`~rlsys.config.ConfigError` naming the part; bad ``ks`` a ValueError."""
    if any(not 1 <= k <= num_samples for k in ks):
        raise ValueError(f"pass@k needs 1 <= k <= the samples per problem ({num_samples}); got k = {list(ks)}")
    tokenizer = fmt.tokenizer
    env = env if env is not None and env.enabled else None
    stop = tuple(rollout.stop)
    if env is not None:
        from rlsys.envs import env_stop_strings

        stop = tuple(dict.fromkeys([*stop, *env_stop_strings(env.name, env.params)]))
    engine = make_engine(rollout, model_dir, tokenizer, stop=stop, key="MODEL_DIR")  # rollout.backend's, as in training
    loop = _agent_loop(engine, fmt, env, rollout) if env is not None else None

    def complete(chunk: list[Prompt], greedy: bool) -> list[_Completed]:
        """One reward item per prompt of ``chunk``: its completion, or its trajectory's final action and turns."""
        if loop is not None:
            rollouts = loop.run(chunk, greedy)
            return [_Completed(r.trajectory.final_action, p.answer, p.text, -1, r.trajectory,
                               tokenizer.decode(r.response_ids, skip_special_tokens=True))
                    for p, r in zip(chunk, rollouts)]
        done = engine.generate([fmt.encode(p) for p in chunk], rollout.max_new_tokens, rollout.temperature, greedy)
        return [_Completed(text, p.answer, p.text) for p, text in
                zip(chunk, (tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in done))]

    def complete_all(chunk: list[Prompt], greedy: bool) -> list[_Completed]:
        return [item for start in range(0, len(chunk), batch_size)
                for item in complete(chunk[start:start + batch_size], greedy)]

    try:
        greedy = complete_all(prompts, greedy=True)
        sampled = complete_all([p for p in prompts for _ in range(num_samples)], greedy=False) if num_samples else []
    finally:
        if hasattr(engine, "close"):  # vLLM: frees its memory and process state for whatever runs next here
            engine.close()
    items = greedy + sampled
    with RewardScorer(reward.terms, reward.timeout_s) as scorer:
        ok = [i for i, item in enumerate(items) if item.trajectory is None or item.trajectory.error is None]
        scored = dict(zip(ok, scorer.score([items[i][:5] for i in ok])))
    outcomes = [scored.get(i) or RewardOutcome(0.0, True, f"environment: {item.trajectory.error}")
                for i, item in enumerate(items)]
    correct = _correct([o.components.get(reward.accuracy_term, np.nan) for o in outcomes])
    greedy_correct, sample_correct = correct[:len(prompts)], correct[len(prompts):]
    problems = []
    for i, (p, item, o) in enumerate(zip(prompts, greedy, outcomes)):
        mine = slice(i * num_samples, (i + 1) * num_samples)
        problems.append(ProblemResult(p, item.text, float("nan") if o.failed else float(o.reward),
                                      bool(greedy_correct[i]), [s.text for s in sampled[mine]],
                                      [bool(c) for c in sample_correct[mine]],
                                      item.trajectory.tool_calls if item.trajectory is not None else 0))
    pass_at = {k: float(np.mean([pass_at_k(num_samples, sum(q.sample_correct), k) for q in problems])) for k in ks}
    return EvalResult(float(np.mean(greedy_correct)) if prompts else 0.0, pass_at, problems)


class _Completed(NamedTuple):
    """A completion to score (the fields of :class:`rlsys.rewards.RewardItem`) and the text to report."""

    completion: str
    reference: str
    prompt: str = ""
    group: int = -1
    trajectory: Trajectory | None = None
    shown: str | None = None  # the whole response, where it is more than the completion

    @property
    def text(self) -> str:
        return self.completion if self.shown is None else self.shown


def _agent_loop(engine: GenerationEngine, fmt: PromptFormat, env: EnvConfig, rollout: RolloutConfig):
    """An agent loop over environment workers on the Ray this process has, or a local one started for them."""
    import ray

    from rlsys.actors.env import EnvWorker
    from rlsys.agent_loop import AgentLoop
    from rlsys.train import ACTOR_ENV

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": ACTOR_ENV})
    workers = [ray.remote(EnvWorker).options(num_cpus=0, max_restarts=-1, max_task_retries=0,
                                             max_concurrency=env.max_concurrency).remote(env.name, env.params)
               for _ in range(env.num_workers)]
    return AgentLoop(engine, fmt, workers, env, rollout.max_new_tokens, rollout.temperature)
