"""Loss aggregation: how per-token losses ℓ_{i,t} become the one scalar an optimizer step minimises.

Every mode is written as a weight per *sample*, L = Σ_i w_i Σ_t ℓ_{i,t}, with w_i computed from counts over the
whole optimizer batch (all micro-batches and all data-parallel ranks). A micro-batch then contributes
Σ_{i ∈ micro-batch} w_i Σ_t ℓ_{i,t}, and the gradients summed over micro-batches and ranks equal the gradient of L
however the batch is split — the classic silent bug is to average within each micro-batch instead.

With N the number of trainable samples, |y_i| their response lengths, and L_max a constant:

- ``token_mean``:            w_i = 1 / Σ_j |y_j|             (each token counts once; DAPO)
- ``seq_mean_token_mean``:   w_i = 1 / (N · |y_i|)           (each response counts once; the original GRPO)
- ``seq_mean_token_sum``:    w_i = 1 / N                     (each response counts by its length)
- ``constant``:              w_i = 1 / (N · L_max)           (Dr. GRPO: no length bias, no batch-size dependence
                                                              beyond N)

Samples that do not train (failed reward, filtered) get w_i = 0 and are not counted in N or Σ|y|.
"""

from __future__ import annotations

import numpy as np

from rlsys.algos.names import AGGREGATIONS


def sample_loss_weights(lengths: np.ndarray, trainable: np.ndarray, mode: str, max_len: int,
                        batch_ids: np.ndarray | None = None) -> np.ndarray:
    """w_i for every sample of the global batch (see the module docstring).

    ``lengths`` [N] response lengths; ``trainable`` [N] bool; ``batch_ids`` [N] optional: which optimizer
    mini-batch each sample belongs to (the counts are then taken per mini-batch, as each is its own step).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    trainable = np.asarray(trainable, dtype=bool) & (lengths > 0)
    batch_ids = np.zeros(len(lengths), dtype=np.int64) if batch_ids is None else np.asarray(batch_ids)
    weights = np.zeros(len(lengths), dtype=np.float64)
    for b in np.unique(batch_ids):
        rows = (batch_ids == b) & trainable
        n, tokens = rows.sum(), lengths[rows].sum()
        if n == 0:
            continue
        if mode == "token_mean":
            weights[rows] = 1.0 / tokens
        elif mode == "seq_mean_token_mean":
            weights[rows] = 1.0 / (n * lengths[rows])
        elif mode == "seq_mean_token_sum":
            weights[rows] = 1.0 / n
        elif mode == "constant":
            weights[rows] = 1.0 / (n * max_len)
        else:
            raise ValueError(f"unknown loss aggregation {mode!r}; use one of {', '.join(AGGREGATIONS)}")
    return weights
