"""Rollout worker: turns prompts into prompt groups with a generation engine (``rollout.backend``: HF or vLLM),
tagged with the policy version — one completion per sample, or with ``env.name`` set a multi-turn trajectory per
sample (:mod:`rlsys.agent_loop`), whose environments run in the environment workers it is given."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AutoTokenizer

from rlsys.agent_loop import AgentLoop
from rlsys.config import EnvConfig, RolloutConfig, TaskConfig
from rlsys.data.chat import PromptFormat
from rlsys.engines.generation import GenerationEngine, HFEngine
from rlsys.model_source import ensure_pad_token, local_model_dir
from rlsys.types import Group, Prompt, RolloutBatch, Sample

log = logging.getLogger(__name__)

# How long a generate call waits for the weights the driver synced just before it (rollout.inflight_weight_updates:
# they travel on a concurrency group of their own, so may arrive a moment after it); past that it generates with
# what it holds, its samples labelled with that version (the staleness bound then drops them if too old).
WEIGHTS_WAIT_S = 30.0
WEIGHTS_GROUP = "weights"  # the actor's concurrency group for in-flight weight syncs


def make_engine(cfg: RolloutConfig, model_dir: str, tokenizer, seed: int = 0, stop: tuple[str, ...] = (),
                key: str = "checkpoint") -> GenerationEngine:
    """The generation engine ``rollout.backend`` names, on the GPU when the worker has one (``seed``: the vLLM
    engine's own; every sampled request brings its own, :func:`request_seed`); it stops at ``rollout.stop`` and
    ``stop`` (an environment's). ``key``: what the user called the checkpoint, for the HF engine's error if it does
    not load."""
    stop = tuple(dict.fromkeys([*cfg.stop, *stop]))
    if cfg.backend == "vllm":
        from rlsys.engines.vllm_engine import VLLMEngine, VLLMSettings  # imports vLLM: only where it is used

        settings = VLLMSettings(
            kv_cache_gib=cfg.vllm_kv_cache_gib, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size, enforce_eager=cfg.vllm_enforce_eager,
            max_model_len=cfg.vllm_max_model_len, inflight_updates=cfg.inflight_weight_updates,
            weight_transfer=cfg.weight_transfer)
        return VLLMEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, settings, stop=stop,
                          tokenizer=tokenizer, seed=seed)
    device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return HFEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, device, key=key, stop=stop,
                    tokenizer=tokenizer)


class RolloutWorker:
    def __init__(self, worker_id: int, model_dir: str, cfg: RolloutConfig, task: TaskConfig,
                 packed: list = (), seed: int = 0, env: EnvConfig | None = None, envs: list = ()) -> None:
        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        model_dir = local_model_dir(model_dir, list(packed))
        self.worker_id, self.seed = worker_id, seed
        self.cfg = cfg
        self.tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(model_dir), model_dir)
        self.format = PromptFormat.of(self.tokenizer, task, model_dir)  # as the driver's load-time checks encoded
        env = env or EnvConfig()
        stop = ()
        if env.enabled:
            from rlsys.envs import env_stop_strings

            stop = env_stop_strings(env.name, env.params)
        self.engine = make_engine(cfg, model_dir, self.tokenizer, seed, stop)
        self.weights = EngineWeights(self.engine, cfg.inflight_weight_updates)
        self.agent = AgentLoop(self.engine, self.format, list(envs), env, cfg.max_new_tokens, cfg.temperature,
                               worker_id) if env.enabled else None

    def generate(self, request_id: int, prompts: list[Prompt], greedy: bool = False, min_version: int = 0
                 ) -> tuple[RolloutBatch, int]:
        """``group_size`` samples per prompt (one when ``greedy``, for evaluation), at the engine's version — or,
        with in-flight weight updates, each token at the version that sampled it (``Sample.token_versions``; the
        sample's ``version`` is its oldest token's). ``min_version``: the version the driver synced last; with
        in-flight updates the call first waits (at most ``WEIGHTS_WAIT_S``) for those weights.

        Called with ``num_returns=2``: the batch, and its number of samples — a small object by which the driver
        learns that generation succeeded without fetching the batch, which goes on to a reward worker."""
        start = time.perf_counter()
        n = 1 if greedy else self.cfg.group_size
        # An evaluation is one version's: it gets no hook, so a sync that arrives meanwhile loads after it
        with self.weights.generating(min_version, steppable=not greedy) as between_steps:
            if self.agent is not None:
                return self._trajectories(request_id, prompts, n, greedy, start)
            rendered = [self.format.render(p) for p in prompts]
            prompt_ids = [self.format.encode_text(text) for text in rendered]
            version = self.engine.version  # at the start; an in-flight update labels the tokens after it
            # Sampling seeded by what is generated, not by the process's history: the same request at the same
            # version samples the same tokens on any worker, after a restart or a resume (a resumed η = 0 run is
            # bit-exact; with in-flight updates, only where no update arrived while it ran).
            completions = self.engine.generate(
                [ids for ids in prompt_ids for _ in range(n)], self.cfg.max_new_tokens, self.cfg.temperature, greedy,
                seed=None if greedy else request_seed(self.seed, prompts, version),
                **({"between_steps": between_steps} if between_steps else {}),
            )
        groups = []
        for i, prompt in enumerate(prompts):
            ids = np.asarray(prompt_ids[i], dtype=np.int32)
            samples = tuple(
                Sample(
                    prompt_id=prompt.prompt_id, sample_index=j, epoch=prompt.epoch, prompt_ids=ids,
                    response_ids=c.token_ids, behaviour_logprobs=c.logprobs, finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    version=version if c.token_versions is None or not len(c.token_versions) else
                    int(c.token_versions.min()), token_versions=c.token_versions,
                    response_text=self.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                )
                for j, c in enumerate(completions[i * n: (i + 1) * n])
            )
            groups.append(Group(prompt=prompt, samples=samples, worker=self.worker_id, prompt_text=rendered[i]))
        return RolloutBatch(request_id, groups, self.worker_id, time.perf_counter() - start), len(completions)

    def _trajectories(self, request_id: int, prompts: list[Prompt], n: int, greedy: bool, start: float
                      ) -> tuple[RolloutBatch, int]:
        """:meth:`generate` with a trajectory per sample (:class:`rlsys.agent_loop.AgentLoop`)."""
        rollouts = self.agent.run([p for p in prompts for _ in range(n)], greedy,
                                  None if greedy else request_seed(self.seed, prompts, self.engine.version))
        version, groups = self.engine.version, []
        for i, prompt in enumerate(prompts):
            mine = rollouts[i * n: (i + 1) * n]
            samples = tuple(
                Sample(
                    prompt_id=prompt.prompt_id, sample_index=j, epoch=prompt.epoch,
                    prompt_ids=np.asarray(r.prompt_ids, dtype=np.int32), response_ids=r.response_ids,
                    behaviour_logprobs=r.behaviour_logprobs, finish_reason=r.finish_reason, stop_reason=r.stop_reason,
                    version=version, response_text=self.tokenizer.decode(r.response_ids, skip_special_tokens=True),
                    loss_mask=r.loss_mask, trajectory=r.trajectory,
                )
                for j, r in enumerate(mine)
            )
            groups.append(Group(prompt=prompt, samples=samples, worker=self.worker_id, prompt_text=mine[0].prompt_text))
        return RolloutBatch(request_id, groups, self.worker_id, time.perf_counter() - start), len(rollouts)

    def update_weights(self, state: dict[str, np.ndarray], version: int, seq: int = 0) -> float:
        """Adopt new weights: between generation batches (calls run in order), or — sent on the "weights"
        concurrency group with in-flight updates — between two decoding steps of the batch being generated
        (:class:`EngineWeights`). ``seq``: the driver's count of weight sends, by which one that arrives after a
        newer one (across the two routes) is ignored. Returns the seconds from arrival to loaded."""
        start = time.perf_counter()
        self.weights.update(state, version, seq)
        return time.perf_counter() - start

    def weight_transfer(self, op: str, payload: dict | None, version: int) -> None:
        """A step of the NCCL weight sync (``rollout.weight_transfer=nccl``; GPU only, untested):
        :meth:`rlsys.engines.vllm_engine.VLLMEngine.weight_transfer`. In line with generate calls: a sync is
        received between two batches."""
        self.engine.weight_transfer(op, payload, version)

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
        with self.weights.exclusive():
            return self.engine.score(prompt_ids, response_ids, self.cfg.temperature)

    def version(self) -> int:
        return self.engine.version

    def backend(self) -> str:
        """The engine generating here: "vllm" or "hf" (what ``rollout.backend`` asked for, as it was built)."""
        return {"HFEngine": "hf", "VLLMEngine": "vllm"}[type(self.engine).__name__]


def request_seed(seed: int, prompts: list[Prompt], version: int) -> int:
    """A 31-bit sampling seed from the run's seed (``train.seed``), the request's prompts (id and epoch, in order) and
    the policy version: the same request at the same version can be replayed, on any worker."""
    key = repr((seed, version, [(p.prompt_id, p.epoch) for p in prompts])).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") >> 1


class EngineWeights:
    """When a rollout worker's engine takes new weights. Without in-flight updates, calls run one at a time, so an
    update waits for the batch being generated. With them (``rollout.inflight_weight_updates``, an engine with
    ``inflight_updates``), :meth:`RolloutWorker.update_weights` runs on a thread of its own while a batch
    generates: it hands the weights to the generating thread, which loads them between two decoding steps (no
    forward pass is running then) and the call returns once they are loaded (the weights group runs one call at a
    time, so at most one update waits). An update whose ``seq`` is below the last loaded one is ignored."""

    def __init__(self, engine, inflight: bool) -> None:
        self.engine, self.inflight = engine, inflight and engine.inflight_updates
        self.cond = threading.Condition()
        self.busy = False  # a batch is generating
        self.pending: tuple[dict, int, int] | None = None
        self.loaded_seq = -1
        self.error: tuple[int, BaseException] | None = None  # (seq, why) of the last update that failed to load

    def update(self, state: dict[str, np.ndarray], version: int, seq: int) -> None:
        with self.cond:
            if not (self.inflight and self.busy):
                self._load(state, version, seq)
                return
            self.pending = (state, version, seq)
            self.cond.wait_for(lambda: self.loaded_seq >= seq or (self.error is not None and self.error[0] >= seq))
            if self.loaded_seq < seq:
                raise self.error[1]

    @contextmanager
    def generating(self, min_version: int, steppable: bool = True):
        """Around a batch: yields the ``between_steps`` hook for the engine (None without in-flight updates, or when
        not ``steppable``: updates then load after the batch)."""
        if not self.inflight:
            yield None
            return
        with self.cond:
            if not self.cond.wait_for(lambda: self.engine.version >= min_version, timeout=WEIGHTS_WAIT_S):
                log.warning("generating with version %d: version %d, synced before this request, has not arrived "
                            "within %g s", self.engine.version, min_version, WEIGHTS_WAIT_S)
            self.busy = True
        try:
            yield self._between_steps if steppable else None
        finally:
            with self.cond:
                self.busy = False
                self._load_pending()

    @contextmanager
    def exclusive(self):
        """Around any other use of the engine (scoring): no update loads meanwhile."""
        with self.cond:
            yield

    def _between_steps(self) -> None:
        with self.cond:
            self._load_pending()

    def _load_pending(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._load(*pending)

    def _load(self, state: dict[str, np.ndarray], version: int, seq: int) -> None:
        if seq < self.loaded_seq:
            return
        try:
            self.engine.update_weights(state, version)
            self.loaded_seq = seq
        except BaseException as e:  # the caller raises it; so does the update call waiting for it
            self.error = (seq, e)
            raise
        finally:
            self.cond.notify_all()
