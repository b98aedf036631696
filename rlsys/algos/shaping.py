"""What the algorithm does to rewards and samples rather than the task: DAPO's soft overlong penalty, and which
samples are left out of the loss."""

from __future__ import annotations

import numpy as np
import torch

from rlsys.algos.advantages import zero_variance_groups


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer_len: int) -> np.ndarray:
    """DAPO's soft overlong punishment, added to the reward of each response of length |y|:

        0                                  if |y| ≤ L_max − L_buf
        ((L_max − L_buf) − |y|) / L_buf    if L_max − L_buf < |y| ≤ L_max     (falls linearly from 0 to −1)
        −1                                 if |y| > L_max

    ``max_len`` = L_max (the generation limit), ``buffer_len`` = L_buf; ``buffer_len`` ≤ 0 disables it (all 0).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if buffer_len <= 0:
        return np.zeros_like(lengths)
    start = max_len - buffer_len
    return np.where(lengths > max_len, -1.0, np.minimum(0.0, (start - lengths) / buffer_len))


def untrained_reasons(rewards: np.ndarray, truncated: np.ndarray, overlong_filter: bool,
                      filter_zero_variance: bool) -> list[str]:
    """Why each sample of a step's groups does not train ("" where it does), in sample order.

    ``rewards`` [G, n] (NaN where the reward failed), ``truncated`` [G·n] bool (the response hit max_new_tokens).
    A sample is left out of the loss (weight 0) if its reward failed, if it was truncated and ``overlong_filter``
    is on (DAPO's overlong filtering), or if its group's rewards are all equal and ``filter_zero_variance`` is on.
    The learner trains exactly the samples given "", and the sample log records the same reasons.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    n = rewards.shape[1]
    zero_var = np.repeat(zero_variance_groups(torch.as_tensor(rewards)).numpy(), n)
    reasons = []
    for failed, cut, flat in zip(np.isnan(rewards).reshape(-1), np.asarray(truncated, dtype=bool), zero_var):
        reasons.append("reward failed" if failed else
                       "truncated (algo.overlong_filter)" if cut and overlong_filter else
                       "all rewards in the group are equal (algo.filter_zero_variance)"
                       if flat and filter_zero_variance else "")
    return reasons
