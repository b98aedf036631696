"""GPU weight sync over NCCL (``rollout.weight_transfer=nccl``): the learners broadcast the policy straight to the
vLLM rollout workers' GPUs through vLLM's weight-transfer API, instead of through Ray's object store.

**Untested.** Written against the API of vLLM 0.32 (``vllm.distributed.weight_transfer``) as its source documents
it; it needs CUDA on learners and rollout workers, and these machines have no GPU, so no line of the transfer has
run. The config accepts it only with ``rollout.backend=vllm`` and GPUs on both sides (:func:`rlsys.config.validate`).
What runs on CPU, and is tested there, is the learner side's source: :meth:`DeepSpeedPolicy.weight_stream` and
``weight_metadata``, which the object-store path uses too.

How a sync goes (vLLM's protocol, ``NCCLTrainerWeightTransferEngine.send_weights``):

1. At set-up, learner rank 0 opens the NCCL group as rank 0 (``trainer_init``) while every rollout worker's vLLM
   joins it (``init_weight_transfer_engine`` through :class:`RolloutWorkersClient`, each worker at its own rank
   offset: 1 + the tensor-parallel ranks of the workers before it).
2. Each sync, every learner rank iterates :class:`PolicySource` — under ZeRO-3 the gather of each bucket is a
   collective of the learner ranks — and rank 0 broadcasts each tensor (packed into vLLM's buffers) while the
   workers receive it (``start_weight_update``, ``update_weights``, ``finish_weight_update``); the workers load
   it layer by layer (vLLM's layer-wise reload) and take the new version.

Known limits: the workers receive only between two generation batches (the sync call queues behind the batch, as
without in-flight updates; the config refuses ``inflight_weight_updates`` with it); a rollout worker that restarts
is out of the NCCL group, which cannot be re-formed without every member — the run then stops naming the worker
(:meth:`rlsys.rollout_pool.RolloutPool.lost`); use the object-store path where workers are
expected to fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import ray
import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine


class PolicySource(WeightSource):
    """vLLM's ``WeightSource`` over a learner's :class:`rlsys.engines.training.DeepSpeedPolicy`: the checkpoint-format
    state dict in float32 (the dtype the vLLM engine runs in), gathered bucket by bucket under ZeRO-3."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, torch.float32, shape) for name, _, shape in self.policy.weight_metadata()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.policy.weight_stream():
            yield name, tensor.to(torch.float32).contiguous()


class RolloutWorkersClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over the rollout worker actors (:meth:`RolloutWorker.weight_transfer`):
    each call fans out to every worker and waits for all. ``tp_sizes``: each worker's tensor-parallel size, which
    sets its ranks in the NCCL group. ``version``: the policy version the next update carries."""

    def __init__(self, workers: list, tp_sizes: list[int]) -> None:
        self.workers, self.tp_sizes, self.version = workers, tp_sizes, 0

    def _all(self, op: str, payloads: list | None = None) -> None:
        ray.get([w.weight_transfer.remote(op, None if payloads is None else payloads[i], self.version)
                 for i, w in enumerate(self.workers)])

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offsets = [1 + sum(self.tp_sizes[:i]) for i in range(len(self.workers))]
        self._all("init", [{**init_info, "rank_offset": offset} for offset in offsets])

    def start_weight_update(self) -> None:
        self._all("start")

    def update_weights(self, update_info) -> None:
        self._all("update", [update_info] * len(self.workers))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish")


class NCCLWeightSender:
    """A learner rank's end of the NCCL sync. Rank 0 is vLLM's sender (it opens the group and drives the workers);
    the other ranks only take part in the ZeRO-3 gathers of each sync."""

    def __init__(self, policy, rank: int, workers: list, tp_sizes: list[int], master_address: str,
                 master_port: int) -> None:
        self.client = RolloutWorkersClient(workers, tp_sizes)
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + sum(tp_sizes), rank=rank)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=self.client,
                                                                   source=PolicySource(policy))

    def send(self, version: int) -> None:
        """Every rank, in step: the policy to every rollout worker, which then holds ``version``."""
        self.client.version = version
        self.engine.send_weights()

    def close(self) -> None:
        self.engine.shutdown()
