"""Reward shaping that belongs to the algorithm rather than to the task: DAPO's soft overlong penalty."""

from __future__ import annotations

import numpy as np


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
