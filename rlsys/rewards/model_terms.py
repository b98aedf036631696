"""Model-based reward components: a reward model or an LLM judge turned into one term of a composite reward.

A :class:`ModelTerm` loads the checkpoints of one component (several: an ensemble) once, with their own
tokenizers, and scores a batch of items in batched forward passes:

- ``classifier`` × ``sample``: r = RM(prompt, completion); an ensemble combines the members' scores (mean, min, or
  mean − k·std); ``reference_relative`` turns r into sigmoid(r − r_ref), r_ref = RM(prompt, reference answer).
- ``classifier`` × ``process``: a process reward model. Every prefix of steps s_1..s_k is scored as a response,
  r_k = RM(prompt, s_1..s_k), and the step scores are aggregated (:mod:`rlsys.rewards.process`).
- ``judge``: the LLM's answer to a scoring prompt, parsed into [0, 1]. An answer that does not parse fails the
  item with the judge's text in the error (counted per component as a failure), it does not crash the batch.

This module imports torch and transformers; the scorer imports it only when a reward has model terms, so the
rule scorer's child process starts fast.
"""

from __future__ import annotations

import logging

import numpy as np

from rlsys.rewards.components import RewardComponent, RewardItem, TermRow
from rlsys.rewards.models import GenerativeJudge, SequenceClassifierRM, ensemble_scores, reference_relative
from rlsys.rewards.process import split_steps, summarize_steps

log = logging.getLogger(__name__)


class ModelTerm:
    def __init__(self, term: RewardComponent, device: str = "cpu") -> None:
        spec = term.model
        assert spec is not None, f"reward component {term.name!r} has no model"
        if not spec.paths:
            raise ValueError(f"reward component {term.name!r}: model.paths is empty; give one or more local "
                             "checkpoint directories")
        self.term, self.spec = term, spec
        if spec.kind == "classifier":
            self.members = [SequenceClassifierRM(p, device, spec.batch_size, spec.max_length) for p in spec.paths]
        elif spec.kind == "judge":
            extra = {"template": spec.template} if spec.template else {}
            self.members = [GenerativeJudge(p, device, low=spec.low, high=spec.high,
                                            max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size, **extra)
                            for p in spec.paths]
        else:
            raise ValueError(f"reward component {term.name!r}: unknown model.kind {spec.kind!r}")
        self.version = "+".join(m.version for m in self.members)

    def score(self, items: list[RewardItem]) -> list[TermRow]:
        """One row per item; a model that raises fails every item of the batch with its error."""
        try:
            if self.spec.kind == "judge":
                return self._judge(items)
            if self.term.scope == "process":
                return self._process(items)
            return [TermRow(float(v), False) for v in self._classify(items)]
        except Exception as e:  # e.g. CUDA out of memory, a tokenizer that chokes: these items fail, the run goes on
            log.exception("reward model %s failed on a batch of %d", self.term.name, len(items))
            return [TermRow(0.0, True, f"reward model {self.term.name!r} failed: {type(e).__name__}: {e}")
                    for _ in items]

    def _ensemble(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        scores = np.stack([m.score(prompts, responses) for m in self.members])  # [M, N]
        return ensemble_scores(scores, self.spec.ensemble, self.spec.ensemble_k)

    def _classify(self, items: list[RewardItem]) -> np.ndarray:
        r = self._ensemble([i.prompt for i in items], [i.completion for i in items])
        if not self.spec.reference_relative:
            return r
        refs = list(dict.fromkeys((i.prompt, i.reference) for i in items))  # each prompt's reference scored once
        r_ref = dict(zip(refs, self._ensemble([p for p, _ in refs], [a for _, a in refs])))
        return reference_relative(r, np.array([r_ref[(i.prompt, i.reference)] for i in items]))

    def _process(self, items: list[RewardItem]) -> list[TermRow]:
        steps = [split_steps(i.completion, self.term.step_split) for i in items]
        prompts, prefixes = [], []
        for item, s in zip(items, steps):
            for k in range(1, len(s) + 1):
                prompts.append(item.prompt)
                prefixes.append("\n".join(s[:k]))
        scores = self._ensemble(prompts, prefixes) if prefixes else np.zeros(0)
        rows, at = [], 0
        for s in steps:
            value, note = summarize_steps(scores[at: at + len(s)], self.term.step_aggregate, self.term.step_tau)
            at += len(s)
            rows.append(TermRow(value, False, None, note))
        return rows

    def _judge(self, items: list[RewardItem]) -> list[TermRow]:
        prompts, responses = [i.prompt for i in items], [i.completion for i in items]
        references = [i.reference for i in items]
        verdicts = [m.judge(prompts, responses, references) for m in self.members]  # [M][N] (score | None, text)
        scores = np.array([[np.nan if v is None else v for v, _ in member] for member in verdicts])  # [M, N]
        combined = ensemble_scores(scores, self.spec.ensemble, self.spec.ensemble_k)  # NaN where any is missing
        rows = []
        for n, value in enumerate(combined):
            unparsed = next(((m, verdicts[j][n][1]) for j, m in enumerate(self.members) if verdicts[j][n][0] is None),
                            None)
            if unparsed:
                member, text = unparsed
                rows.append(TermRow(0.0, True, f"judge {member.path} gave no score in range: {text[:120]!r}"))
            else:
                rows.append(TermRow(float(value), False))
        return rows
