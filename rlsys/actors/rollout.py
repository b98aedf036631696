"""Rollout worker: turns prompts into prompt groups with a generation engine (``rollout.backend``: HF or vLLM),
tagged with the policy version — one completion per sample, or with ``env.name`` set a multi-turn trajectory per
sample (:mod:`rlsys.agent_loop`), whose environments run in the environment workers it is given."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
from transformers import AutoTokenizer

from rlsys.agent_loop import AgentLoop
from rlsys.config import EnvConfig, RolloutConfig, TaskConfig
from rlsys.data.chat import PromptFormat
from rlsys.engines.generation import GenerationEngine, HFEngine
from rlsys.model_source import ensure_pad_token, local_model_dir
from rlsys.types import Group, Prompt, RolloutBatch, Sample


def make_engine(cfg: RolloutConfig, model_dir: str, tokenizer, seed: int = 0, stop: tuple[str, ...] = ()
                ) -> GenerationEngine:
    """The generation engine ``rollout.backend`` names, on the GPU when the worker has one (``seed``: the vLLM
    engine's own; every sampled request brings its own, :func:`request_seed`); it stops at ``rollout.stop`` and
    ``stop`` (an environment's)."""
    stop = tuple(dict.fromkeys([*cfg.stop, *stop]))
    if cfg.backend == "vllm":
        from rlsys.engines.vllm_engine import VLLMEngine, VLLMSettings  # imports vLLM: only where it is used

        settings = VLLMSettings(
            kv_cache_gib=cfg.vllm_kv_cache_gib, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size, enforce_eager=cfg.vllm_enforce_eager,
            max_model_len=cfg.vllm_max_model_len)
        return VLLMEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, settings, stop=stop,
                          tokenizer=tokenizer, seed=seed)
    device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return HFEngine(model_dir, tokenizer.pad_token_id, tokenizer.eos_token_id, device, stop=stop, tokenizer=tokenizer)


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
        self.agent = AgentLoop(self.engine, self.format, list(envs), env, cfg.max_new_tokens, cfg.temperature,
                               worker_id) if env.enabled else None

    def generate(self, request_id: int, prompts: list[Prompt], greedy: bool = False) -> tuple[RolloutBatch, int]:
        """``group_size`` samples per prompt (one when ``greedy``, for evaluation), all at the engine's version.

        Called with ``num_returns=2``: the batch, and its number of samples — a small object by which the driver
        learns that generation succeeded without fetching the batch, which goes on to a reward worker."""
        start = time.perf_counter()
        n = 1 if greedy else self.cfg.group_size
        if self.agent is not None:
            return self._trajectories(request_id, prompts, n, greedy, start)
        rendered = [self.format.render(p) for p in prompts]
        prompt_ids = [self.format.encode_text(text) for text in rendered]
        # Sampling seeded by what is generated, not by the process's history: the same request at the same version
        # samples the same tokens on any worker, after a restart or a resume (a resumed η = 0 run is bit-exact).
        completions = self.engine.generate(
            [ids for ids in prompt_ids for _ in range(n)], self.cfg.max_new_tokens, self.cfg.temperature, greedy,
            seed=None if greedy else request_seed(self.seed, prompts, self.engine.version),
        )
        version = self.engine.version
        groups = []
        for i, prompt in enumerate(prompts):
            ids = np.asarray(prompt_ids[i], dtype=np.int32)
            samples = tuple(
                Sample(
                    prompt_id=prompt.prompt_id, sample_index=j, epoch=prompt.epoch, prompt_ids=ids,
                    response_ids=c.token_ids, behaviour_logprobs=c.logprobs, finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason, version=version,
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

    def update_weights(self, state: dict[str, np.ndarray], version: int) -> float:
        """Adopt new weights between generation batches (calls run in order); returns the seconds it took."""
        start = time.perf_counter()
        self.engine.update_weights(state, version)
        return time.perf_counter() - start

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[np.ndarray]:
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
