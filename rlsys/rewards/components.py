"""What a reward is made of: named, weighted components, and how one item's component values combine.

A component is rule-based (``fn``: a pure function, run in the scorer's child process) or model-based (``model``:
a reward model or judge, run by the reward worker itself, on its GPU if it has one). Its ``scope`` says what it
scores:

- ``sample``  — one completion: ``fn(completion, reference, **params) -> float | Scored``.
- ``group``   — a prompt's whole group at once (pairwise or group-relative rewards):
  ``fn(completions: list[str], reference, **params) -> list[float | Scored]``, one value per completion.
- ``trajectory`` — a whole multi-turn trajectory (``env.name``): ``fn(trajectory, reference, **params) -> float |
  Scored``, where ``trajectory`` is a :class:`rlsys.types.Trajectory` — its turns (each action, observation, the
  environment's own reward, done and info), ``tool_calls`` and ``env_rewards``; a single completion comes as a
  trajectory of one turn. (The other scopes see a trajectory's final action as its completion.)
- ``process`` — one score per reasoning step: the completion is split into steps at ``step_split`` (a regex),
  ``fn(steps: list[str], reference, **params) -> list[float]`` (or a reward model scores every prefix of steps),
  and the step scores are aggregated by ``step_aggregate`` (:mod:`rlsys.rewards.process`).

The total a learner sees is Σ weight × value over the components; each value is also kept on its own.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rlsys.types import Trajectory, Turn

SCOPES = ("sample", "group", "process", "trajectory")
MODEL_KINDS = ("classifier", "judge")
ENSEMBLE_MODES = ("mean", "min", "mean_minus_std")
FLOAT32_MAX = 3.4028234663852886e38  # rewards are float32 from the buffer on: a larger one would become inf
JUDGE_TEMPLATE_FIELDS = ("prompt", "response", "reference", "low", "high")


def check_judge_template(template: str) -> None:
    """Raise ValueError, saying what is wrong, unless ``template`` is a format string whose placeholders are among
    :data:`JUDGE_TEMPLATE_FIELDS`, include ``{response}``, and format (so a bad spec such as ``{prompt:d}`` fails
    here, at start-up, rather than at the first judge call). Here and not beside the judge, so that config
    validation can use it without importing torch."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"judge template is not a valid format string ({e}); write literal braces as '{{{{' and "
                         "'}}}}'") from None
    bad = [f for f in fields if f.split(".")[0].split("[")[0] not in JUDGE_TEMPLATE_FIELDS]
    if bad:
        raise ValueError(f"judge template has unknown placeholder(s) {sorted(set(bad))}; allowed: "
                         f"{', '.join('{' + f + '}' for f in JUDGE_TEMPLATE_FIELDS)}")
    if "response" not in fields:
        raise ValueError("judge template has no {response} placeholder; the judge would never see what it grades")
    try:
        template.format(prompt="", response="", reference="", low=0.0, high=10.0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"judge template does not format: {type(e).__name__}: {e}") from None


@dataclass
class RewardModelSpec:
    """A model-based component: a sequence-classification reward model (``classifier``), or an LLM asked for a
    score (``judge``). Several ``paths`` make an ensemble. Every checkpoint is local: nothing is downloaded."""

    kind: str = "classifier"  # classifier | judge
    paths: list[str] = field(default_factory=list)  # local Hugging Face checkpoints; > 1: an ensemble
    ensemble: str = "mean"  # mean | min | mean_minus_std (mean − ensemble_k · std: an uncertainty penalty)
    ensemble_k: float = 1.0
    reference_relative: bool = False  # sigmoid(r − r_ref), r_ref = the model's score of the reference answer
    batch_size: int = 32
    max_length: int = 512  # classifier: tokens kept (from the end of prompt + response)
    template: str | None = None  # judge: prompt with {prompt} {response} {reference}; None: the built-in one
    low: float = 0.0  # judge: the score range the template asks for; scores are normalised to [0, 1]
    high: float = 10.0
    max_new_tokens: int = 16  # judge: length of its answer


@dataclass
class RewardComponent:
    """One named term of a composite reward: ``weight × value``, where the value comes from a rule ``fn`` or a
    ``model`` (exactly one of the two), over the ``scope`` it scores.

    Also the type of ``reward.components`` entries in the config (:class:`rlsys.config.RewardConfig`)."""

    name: str = ""
    fn: str = ""  # rule-based: a registered reward name or module:function
    weight: float = 1.0  # 0 computes and logs the term without adding it to the reward (a monitor)
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments for fn
    scope: str = "sample"  # sample | group | process
    step_split: str = r"\n+"  # process: regex separating steps
    step_aggregate: str = "min"  # process: sum | min | last | min_form
    step_tau: float = 0.1  # process, min_form: softmin temperature
    model: RewardModelSpec | None = None  # model-based

    @staticmethod
    def single(fn: str) -> RewardComponent:
        """The whole reward is ``fn``: one term, named after the function."""
        return RewardComponent(name=fn.rpartition(":")[2], fn=fn)

    @property
    def is_model(self) -> bool:
        return self.model is not None


class RewardItem(NamedTuple):
    """One completion to score. Consecutive items with the same ``group`` (≥ 0) are one prompt's group; −1: the
    item is a group of its own."""

    completion: str
    reference: str
    prompt: str = ""
    group: int = -1
    trajectory: Trajectory | None = None  # a multi-turn sample's turns; None: a single completion


class TermRow(NamedTuple):
    """One component's result for one item."""

    value: float
    failed: bool
    error: str | None = None
    note: str = ""  # the reason given with the value (Scored), or other detail such as per-step scores


@dataclass(frozen=True)
class RewardOutcome:
    """The score for one item. ``failed`` means a component with non-zero weight did not produce a usable number
    (it raised, timed out, crashed, returned a non-number, or a judge's answer did not parse); ``reward`` is then
    0.0 and ``error`` says which and what happened. ``components``: each term's own value (NaN where that term
    failed); ``notes``: the reason a term gave with its value, for terms that gave one; ``versions``: the
    reward-model version that scored each model-based term."""

    reward: float
    failed: bool
    error: str | None = None
    components: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def combine(terms: tuple[RewardComponent, ...], rows: list[TermRow], versions: dict[str, str] | None = None
            ) -> RewardOutcome:
    """The weighted sum of one item's term values; failed if any term with non-zero weight failed."""
    failed = [(t, r.error) for t, r in zip(terms, rows) if r.failed and t.weight != 0]
    components = {t.name: (math.nan if r.failed else r.value) for t, r in zip(terms, rows)}
    notes = {t.name: r.note for t, r in zip(terms, rows) if r.note}
    versions = dict(versions or {})
    if failed:
        error = failed[0][1] if len(terms) == 1 else "; ".join(f"{t.name}: {e}" for t, e in failed)
        return RewardOutcome(0.0, True, error, components, notes, versions)
    total = sum(t.weight * r.value for t, r in zip(terms, rows) if t.weight != 0)
    if not abs(total) <= FLOAT32_MAX:  # inf or NaN too: rewards are stored and trained as float32
        return RewardOutcome(0.0, True, f"the weighted sum of the terms, {total!r}, is outside float32's range "
                             f"(|x| ≤ {FLOAT32_MAX:.3g})", components, notes, versions)
    return RewardOutcome(float(total), False, None, components, notes, versions)


def trajectory_of(item: RewardItem) -> Trajectory:
    """The item's trajectory; a single completion as a trajectory of one turn that ended it."""
    return item.trajectory if item.trajectory is not None else Trajectory((Turn(item.completion, done=True),))


def group_slices(items: list[RewardItem]) -> list[slice]:
    """The index ranges of the groups in ``items`` (consecutive equal ``group`` ids ≥ 0; −1 stands alone)."""
    slices, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i].group < 0 or items[i].group != items[start].group:
            slices.append(slice(start, i))
            start = i
    return slices
