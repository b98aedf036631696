"""The training engine: a Hugging Face causal LM under DeepSpeed ZeRO, one data-parallel rank per process, plus
the optional frozen reference and the optional critic (value model) that PPO-GAE trains beside the policy.

One training step = ``epochs`` passes over the rank's share of the batch, each cut into ``minibatches`` optimizer
updates, each update cut into micro-batches. The loss of every micro-batch is already weighted by per-sample
weights computed from counts over the *global* mini-batch (:mod:`rlsys.algos.aggregation`), so the update does
not depend on how a batch is split: DeepSpeed's own 1/GAS scaling is switched off and its data-parallel gradient
average (÷ world size) is undone by a × world size factor.

The critic is a separate model (``AutoModelForTokenClassification`` with one output, initialised from the policy
checkpoint) with its own DeepSpeed engine in the same process — as in DeepSpeed-Chat. It is used at exactly the
moments the policy is, on the same data-parallel shards, so co-locating it ships no values between actors; and
unlike a value head on the policy's trunk, its loss cannot pull the policy's representation around.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

from rlsys.algos import entropy_from_logits, importance_weights, kl_estimate, policy_loss, token_logprobs, value_loss
from rlsys.config import AlgoConfig, LearnerConfig
from rlsys.engines.padding import pad_sequences

WEIGHT_BUCKET_BYTES = 256 << 20  # float32 bytes of parameters gathered at once for a weight sync under ZeRO-3


@dataclass(frozen=True)
class TrainBatch:
    """The rank's sequences as right-padded tensors. Response tokens that train are where ``mask`` is 1.

    ``input_ids`` [B, L]; ``attention_mask`` [B, L]; token tensors [B, L−1] are aligned with the *targets*
    ``input_ids[:, 1:]`` (position t predicts token t+1). Per sample [B]: ``loss_weight`` (the aggregation weight,
    0 for a sample that does not train), ``token_weight`` (1 / trainable tokens of its global mini-batch: token
    means for metrics and the value loss), ``minibatch`` (which optimizer update it belongs to). Filled in by
    the learner before training: ``advantages`` and, when needed, ``prox_logprobs`` (π at the start of the step),
    ``ref_logprobs``, ``old_values`` and ``returns``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    loss_weight: torch.Tensor
    token_weight: torch.Tensor
    minibatch: torch.Tensor
    advantages: torch.Tensor | None = None
    prox_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @staticmethod
    def build(prompts: list[np.ndarray], responses: list[np.ndarray], behaviour: list[np.ndarray],
              trainable: np.ndarray, loss_weight: np.ndarray, token_weight: np.ndarray, minibatch: np.ndarray,
              pad_id: int, loss_masks: list[np.ndarray | None] | None = None) -> TrainBatch:
        """``loss_masks``: per sample [R_i] (1: a token the policy generated) or None (all of them), as
        :attr:`rlsys.types.Sample.loss_mask`; a sample that does not train (``trainable`` false) is masked out."""
        seqs = [np.concatenate([p, r]).tolist() for p, r in zip(prompts, responses)]
        ids, attn = pad_sequences(seqs, pad_id, "right")
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            own = loss_masks[i] if loss_masks is not None else None
            span = torch.ones(len(r)) if own is None else torch.as_tensor(np.asarray(own, dtype=np.float32))
            mask[i, len(p) - 1: len(p) - 1 + len(r)] = span * float(trainable[i])
        batch = TrainBatch(ids, attn, mask, torch.zeros_like(mask), torch.as_tensor(loss_weight, dtype=torch.float32),
                           torch.as_tensor(token_weight, dtype=torch.float32), torch.as_tensor(minibatch))
        return dataclasses.replace(batch, behaviour_logprobs=batch.scatter(prompts, behaviour))

    def scatter(self, prompts: list[np.ndarray], per_sample: list[np.ndarray]) -> torch.Tensor:
        """Per-sample response arrays ([R_i] each) placed at their target positions: [B, L−1], 0 elsewhere."""
        out = torch.zeros(self.mask.shape)
        for i, (p, values) in enumerate(zip(prompts, per_sample)):
            # a copy: arrays from the object store are read-only
            out[i, len(p) - 1: len(p) - 1 + len(values)] = torch.from_numpy(np.array(values, dtype=np.float32))
        return out

    def rows(self, index: torch.Tensor | slice, device: torch.device | str | None = None) -> TrainBatch:
        """The batch of rows ``index`` (on ``device``, if given)."""
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index] if device is None else t[index].to(device)

        return TrainBatch(**{f.name: part(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def deepspeed_config(cfg: LearnerConfig, micro_batches: int, world_size: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": micro_batches,
        "train_batch_size": cfg.micro_batch_size * micro_batches * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # The optimizer is torch's AdamW (no fused-op build needed on CPU); ZeRO shards its state all the same.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def micro_batches_per_update(samples_per_rank: int, minibatches: int, micro_batch_size: int) -> int:
    return math.ceil(samples_per_rank // minibatches / micro_batch_size)


def policy_objective(logits: torch.Tensor, mb: TrainBatch, algo: AlgoConfig, temperature: float
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The policy loss of micro-batch ``mb`` from the policy's ``logits`` [B, L−1, V] (position t predicts target
    t+1): L = Σ_i w_i Σ_t m_{i,t} ℓ_{i,t} with w_i = ``mb.loss_weight`` (:mod:`rlsys.algos.aggregation`) and
    m = ``mb.mask``, ℓ = the clipped policy-gradient term (× importance weights when decoupled) + β·KL penalty (with
    ``kl_in=loss``) − entropy bonus. Every per-token term is taken only where m is 1, so tokens off the mask (the
    prompt, padding, observations in a multi-turn response) get exactly zero gradient.

    Returns (L, per-token terms for metrics {pg_loss, kl, kl_penalty, entropy, behaviour_kl} [B, L−1], flags of the
    clipping and importance weights [B, L−1])."""
    a, mask = algo, mb.mask
    behaviour = mb.behaviour_logprobs
    logp = token_logprobs(logits, mb.input_ids[:, 1:], temperature)
    # One update per step: π at the start of the step *is* the π_θ of this forward pass.
    prox = mb.prox_logprobs if mb.prox_logprobs is not None else logp.detach()
    anchor = prox if a.decoupled else behaviour
    pg, flags = policy_loss(a.policy_loss, logp, anchor, mb.advantages, mask, a.clip_eps_low, a.clip_eps_high,
                            a.dual_clip_c)
    if a.decoupled:
        weight, is_flags = importance_weights(prox, behaviour, mask, a.is_mode, a.is_level, a.is_cap)
        pg = pg * weight
        flags |= {"is_truncated": is_flags["truncated"], "is_masked": is_flags["masked"], "is_weight": weight}
    per_token = pg
    kl = kl_penalty = torch.zeros_like(pg)
    if mb.ref_logprobs is not None:  # logged either way; in the loss only for kl_in=loss
        kl_penalty = kl_estimate(logp, mb.ref_logprobs, a.kl_kind)  # its gradient is what the loss minimises
        kl = kl_estimate(logp.detach(), mb.ref_logprobs, "k3")  # the metric: unbiased for KL(π ‖ π_ref) with any k
        if a.kl_in == "loss":
            per_token = per_token + a.kl_coef * kl_penalty
    entropy = entropy_from_logits(logits if a.entropy_coef > 0 else logits.detach(), temperature)
    if a.entropy_coef > 0:
        per_token = per_token - a.entropy_coef * entropy
    loss = (per_token * mask * mb.loss_weight.unsqueeze(-1)).sum()
    terms = {"pg_loss": pg, "kl": kl, "kl_penalty": kl_penalty, "entropy": entropy,
             "behaviour_kl": kl_estimate(behaviour, prox, "k3")}
    return loss, terms, flags


def initial_critic(model_dir: str) -> torch.nn.Module:
    """The critic before training: ``model_dir``'s transformer with a one-output head on every position
    (``AutoModelForTokenClassification``, float32). A causal LM's head is left out and a new value head made, seeded
    so every run starts from the same one; a reward model's scalar head (``AutoModelForSequenceClassification``,
    which names it as the token head does, e.g. ``score`` in Llama) is loaded as the value head — the usual
    start for a PPO critic (Ouyang et al. 2022)."""
    config = AutoConfig.from_pretrained(model_dir, num_labels=1, classifier_dropout=0.0)
    with torch.random.fork_rng():  # a new value head's initialisation is the same in every run
        torch.manual_seed(0)
        return AutoModelForTokenClassification.from_pretrained(model_dir, config=config, dtype=torch.float32)


class DeepSpeedPolicy:
    """A policy being trained, the optional frozen reference (KL) and the optional critic (GAE).

    Construct after ``torch.distributed`` is initialised (see :func:`rlsys.actors.learner.init_distributed`).
    """

    def __init__(self, model_dir: str, learner: LearnerConfig, algo: AlgoConfig, samples_per_rank: int,
                 world_size: int, temperature: float = 1.0, device: str = "cpu", reference_dir: str | None = None,
                 critic_dir: str | None = None) -> None:
        """``model_dir``: the initial policy; ``reference_dir`` / ``critic_dir``: the checkpoints the reference and
        the critic start from (None: ``model_dir``; ``model.reference_path`` / ``model.critic_path``)."""
        self.algo, self.temperature, self.world_size = algo, temperature, world_size
        self.device = torch.device(device)
        self.micro_batch_size = learner.micro_batch_size
        self.micro_batches = micro_batches_per_update(samples_per_rank, algo.minibatches, learner.micro_batch_size)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.engine = self._deepspeed(model, learner, learner.lr)
        self.reference = None
        if algo.kl_coef > 0 and algo.reference == "learner":  # kl_coef = 0: no reference at all
            self.reference = AutoModelForCausalLM.from_pretrained(reference_dir or model_dir, dtype=torch.float32)
            self.reference.to(self.device).eval().requires_grad_(False)
        self.critic = None
        if algo.advantage == "gae":
            self.critic = self._deepspeed(initial_critic(critic_dir or model_dir), learner, algo.critic_lr)

    def _deepspeed(self, model: torch.nn.Module, learner: LearnerConfig, lr: float):
        import deepspeed  # heavy import, only in learner processes

        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=learner.weight_decay,
                                      eps=learner.adam_eps)
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(learner, self.micro_batches, self.world_size))
        return engine

    # ------------------------------------------------------------------ before the updates
    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, i + self.micro_batch_size) for i in range(0, n, self.micro_batch_size)]

    @torch.no_grad()
    def prepare(self, batch: TrainBatch, need_ref: bool, need_prox: bool) -> TrainBatch:
        """Forward passes without gradient, before any update: reference logprobs, proximal logprobs (π_θ at the
        start of the step) and the critic's values, as the config needs them."""
        if not (need_ref or need_prox or self.critic is not None):
            return batch
        ref, prox, values = [], [], []
        self.engine.eval()
        if self.critic is not None:
            self.critic.eval()
        for rows in self._chunks(len(batch)):
            ids = batch.input_ids[rows].to(self.device)
            attn = batch.attention_mask[rows].to(self.device)
            targets = ids[:, 1:]
            if need_ref:
                ref.append(token_logprobs(self.reference(input_ids=ids, attention_mask=attn).logits[:, :-1], targets,
                                          self.temperature).cpu())
            if need_prox:
                prox.append(token_logprobs(self.engine(input_ids=ids, attention_mask=attn).logits[:, :-1], targets,
                                           self.temperature).cpu())
            if self.critic is not None:
                values.append(self._values(self.critic, ids, attn).cpu())
        return dataclasses.replace(
            batch, ref_logprobs=torch.cat(ref) if need_ref else batch.ref_logprobs,
            prox_logprobs=torch.cat(prox) if need_prox else None,
            old_values=torch.cat(values) if self.critic is not None else None)

    @staticmethod
    def _values(critic, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """V(state before target token t+1), [B, L−1]: the critic's output at position t."""
        return critic(input_ids=ids, attention_mask=attn).logits[:, :-1, 0].float()

    # ------------------------------------------------------------------ the updates
    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """``epochs`` × ``minibatches`` optimizer updates over ``batch`` (this rank's share, fully prepared).

        Returns this rank's shares of global token-means (averaged over updates) — the controller sums ranks —
        and ``*_max`` / ``*_min`` values that it combines by max / min."""
        assert batch.advantages is not None, "compute advantages before training"
        self.engine.train()
        if self.critic is not None:
            self.critic.train()
        sums: dict[str, float] = {}
        extremes: dict[str, float] = {}
        updates = self.algo.epochs * self.algo.minibatches
        for _ in range(self.algo.epochs):
            for m in range(self.algo.minibatches):
                mini = batch.rows(torch.nonzero(batch.minibatch == m).squeeze(-1))
                chunks = self._chunks(len(mini))
                assert len(chunks) == self.micro_batches, "every rank must run the same number of micro-batches"
                for rows in chunks:
                    parts, peaks = self._micro_batch(mini.rows(rows))
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v) / updates
                    for k, v in peaks.items():
                        extremes[k] = max(extremes.get(k, -math.inf), v) if k.endswith("_max") else \
                            min(extremes.get(k, math.inf), v)
        grad_norm = self.engine.get_global_grad_norm()
        return {**sums, **extremes, "grad_norm": float(grad_norm) if grad_norm is not None else math.nan}

    def _micro_batch(self, mb: TrainBatch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Backward through one micro-batch of the policy (and critic); returns metric shares and extremes."""
        a, dev = self.algo, self.device
        mb = mb.rows(slice(None), device=dev)
        logits = self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1]
        loss, terms, flags = policy_objective(logits, mb, a, self.temperature)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
        self.engine.step()  # a no-op until the last micro-batch of the update (DeepSpeed counts them)

        mask, adv = mb.mask, mb.advantages
        token_w = mb.token_weight.unsqueeze(-1) * mask

        def share(x: torch.Tensor) -> torch.Tensor:
            return (x.detach() * token_w).sum()

        out = {"loss": loss.detach(), **{k: share(v) for k, v in terms.items()}, "adv_mean": share(adv)}
        out |= {f"{k}_frac" if k != "is_weight" else "is_weight_mean": share(v) for k, v in flags.items()}
        live = mask > 0
        peaks = {}
        if live.any():
            peaks = {"adv_abs_max": float(adv[live].abs().max())}
            if a.decoupled:
                peaks |= {"is_weight_max": float(flags["is_weight"][live].max()),
                          "is_weight_min": float(flags["is_weight"][live].min())}
        if self.critic is not None:
            values = self._values(self.critic, mb.input_ids, mb.attention_mask)
            vloss, vclipped = value_loss(values, mb.old_values, mb.returns, a.value_clip)
            critic_loss = (vloss * token_w).sum()
            self.critic.backward(critic_loss * self.world_size, scale_wrt_gas=False)
            self.critic.step()
            out |= {"value_loss": critic_loss.detach(), "value_clip_frac": share(vclipped), "value_mean": share(values)}
        return out, peaks

    # ------------------------------------------------------------------ checks and weights
    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """log π(target) at every position, [B, L−1] (for checks against the rollout engine)."""
        self.engine.eval()
        logits = self.engine(input_ids=batch.input_ids.to(self.device),
                             attention_mask=batch.attention_mask.to(self.device)).logits
        return token_logprobs(logits[:, :-1], batch.input_ids[:, 1:].to(self.device), self.temperature).cpu()

    def save_checkpoint(self, directory: str, version: int) -> dict[str, np.ndarray] | None:
        """Write this rank's DeepSpeed checkpoint(s) under ``directory``/deepspeed — tag ``policy`` (model and
        optimizer state, this rank's ZeRO shards) and, with a critic, ``critic`` — and return the full policy
        weights on rank 0 (None elsewhere), for the Hugging Face export. A collective: every rank must call it."""
        target = str(Path(directory) / "deepspeed")
        self.engine.save_checkpoint(target, tag="policy", client_state={"version": version}, save_latest=False)
        if self.critic is not None:
            self.critic.save_checkpoint(target, tag="critic", client_state={"version": version}, save_latest=False)
        return self.full_state_dict()

    def load_checkpoint(self, directory: str) -> int:
        """Restore this rank's state from :meth:`save_checkpoint`'s files (the same number of ranks and ZeRO stage);
        returns the version saved with it. Raises RuntimeError naming the directory when a part is missing."""
        target = str(Path(directory) / "deepspeed")
        engines = [("policy", self.engine)] + ([("critic", self.critic)] if self.critic is not None else [])
        version = None
        for tag, engine in engines:
            path, client = engine.load_checkpoint(target, tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if path is None:
                raise RuntimeError(f"{directory}: no DeepSpeed checkpoint {tag!r} for this rank")
            version = client["version"] if version is None else version
        return int(version)

    def full_state_dict(self, all_ranks: bool = False, bucket_bytes: int = WEIGHT_BUCKET_BYTES
                        ) -> dict[str, np.ndarray] | None:
        """The full float32 policy weights (checkpoint names, tied weights under each of their names) as numpy
        arrays on rank 0 (on every rank if ``all_ranks``; None elsewhere), from :meth:`weight_stream`: under ZeRO-3
        gathered ``bucket_bytes`` at a time into host memory, so an accelerator never holds more than one bucket of
        gathered weights beyond its own shard. A collective under ZeRO-3: every rank must call it, with the same
        ``bucket_bytes``."""
        keep = self.engine.global_rank == 0 or all_ranks
        out: dict[str, np.ndarray] = {}
        for name, tensor in self.weight_stream(bucket_bytes):
            if keep:
                out[name] = tensor.detach().to("cpu", torch.float32).numpy().copy()
        return out if keep else None

    def weight_metadata(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(name, dtype, full shape) of every entry :meth:`weight_stream` yields, in its order, without gathering
        (ZeRO-3 keeps a sharded parameter's full shape in ``ds_shape``)."""
        return [(name, tensor.dtype, tuple(getattr(tensor, "ds_shape", tensor.shape)))
                for name, tensor in self.engine.module.state_dict(keep_vars=True).items()]

    def weight_stream(self, bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> Iterator[tuple[str, torch.Tensor]]:
        """(checkpoint name, full tensor on this rank's device) for every entry of the policy's state dict, in its
        order — a tied weight under each of its names, buffers included. Under ZeRO-3 consecutive entries are
        gathered ``bucket_bytes`` (float32 bytes) at a time, and a bucket is released before the next is gathered;
        a yielded tensor is valid until the next is requested. A collective under ZeRO-3: every rank must iterate it
        to the end, in step."""
        import deepspeed

        stage3 = self.engine.zero_optimization_stage() == 3
        entries = list(self.engine.module.state_dict(keep_vars=True).items())  # name → Parameter (shared when tied)
        sizes = [4 * math.prod(shape) for _, _, shape in self.weight_metadata()]
        for bucket in weight_buckets(list(range(len(entries))), sizes, bucket_bytes if stage3 else None):
            params = list({id(t): t for _, t in (entries[i] for i in bucket)
                           if isinstance(t, torch.nn.Parameter)}.values())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=stage3 and bool(params)):
                for i in bucket:
                    yield entries[i][0], entries[i][1].detach()


def weight_buckets(items: list, sizes: list[int], bucket_bytes: int | None) -> list[list]:
    """``items`` in order, cut into consecutive buckets whose ``sizes`` (bytes) add up to at most ``bucket_bytes``
    (an item larger than that is a bucket of its own); one bucket of all when ``bucket_bytes`` is None."""
    if bucket_bytes is None:
        return [list(items)] if items else []
    buckets, size = [[]], 0
    for item, n in zip(items, sizes):
        if buckets[-1] and size + n > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(item)
        size += n
    return [b for b in buckets if b]
