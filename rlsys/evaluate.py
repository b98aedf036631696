"""Held-out evaluation of a checkpoint, without Ray: greedy completions scored by the run's reward function."""

from __future__ import annotations

import numpy as np

from rlsys.config import RewardConfig, RolloutConfig
from rlsys.data.chat import PromptFormat
from rlsys.engines.generation import HFEngine
from rlsys.rewards import RewardScorer
from rlsys.types import Prompt


def accuracy(rewards: np.ndarray) -> float:
    """Fraction of samples whose reward reached 1 (fully correct); a failed reward (NaN) counts as wrong.

    With a composite reward, pass the values of the correctness term (``RewardConfig.accuracy_term``)."""
    return float(np.mean(np.nan_to_num(np.asarray(rewards, dtype=np.float64), nan=0.0) >= 1.0))


def evaluate_checkpoint(model_dir: str, prompts: list[Prompt], fmt: PromptFormat, reward: RewardConfig,
                        rollout: RolloutConfig, batch_size: int = 256) -> tuple[float, list[tuple[str, str, float]]]:
    """(accuracy, [(prompt, completion, reward)]) of greedy decoding from ``model_dir`` on ``prompts``, encoded by
    ``fmt`` (built with ``model_dir``'s tokenizer, as :func:`rlsys.prepare.load_datasets` builds it) and stopped as
    rollout workers stop (end tokens, ``rollout.stop``; ``rollout.max_new_tokens`` at most); accuracy counts the
    correctness term of the reward. A checkpoint that does not load (or whose weights do not fit its config) raises
    :class:`~rlsys.config.ConfigError` naming the part."""
    tokenizer = fmt.tokenizer
    engine = HFEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, key="MODEL_DIR",
                      stop=tuple(rollout.stop), tokenizer=tokenizer)
    completions = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        outs = engine.generate([fmt.encode(p) for p in chunk], rollout.max_new_tokens, 1.0, greedy=True)
        completions += [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
    with RewardScorer(reward.terms, reward.timeout_s) as scorer:
        outcomes = scorer.score([(c, p.answer) for c, p in zip(completions, prompts)])
    rewards = np.array([np.nan if o.failed else o.reward for o in outcomes])
    correct = np.array([o.components.get(reward.accuracy_term, np.nan) for o in outcomes])
    return accuracy(correct), [(p.text, c, float(r)) for p, c, r in zip(prompts, completions, rewards)]
