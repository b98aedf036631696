"""Model-based reward components through the real scorer: ensembles, reference-relative shaping, a process reward
model, a judge whose answers do not parse, and the reward-model version on every outcome. Models built here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlsys.config import ModelConfig
from rlsys.data.model import build_tiny_llama
from rlsys.data.tokenizer import build_char_tokenizer
from rlsys.rewards import RewardComponent, RewardItem, RewardModelSpec, RewardScorer
from rlsys.rewards.models import SequenceClassifierRM, ensemble_scores, model_version
from rlsys.rewards.process import aggregate_steps


def build(directory, kind: str, seed: int) -> str:
    tokenizer = build_char_tokenizer("0123456789+= abcdefghijklmnopqrstuvwxyz:\n")
    size = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_position_embeddings=128,
                       seed=seed)
    build_tiny_llama(size, tokenizer, reward_head=kind == "rm").save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rms")
    return build(tmp / "a", "rm", 1), build(tmp / "b", "rm", 2), build(tmp / "judge", "lm", 3)


ITEMS = [RewardItem("12", "12", "5+7=", 0), RewardItem("13", "12", "5+7=", 0),
         RewardItem("4 then 9", "9", "4+5=", 1), RewardItem("", "9", "4+5=", 1)]


def direct(path: str, prompts: list[str], responses: list[str]) -> np.ndarray:
    return SequenceClassifierRM(path).score(prompts, responses)


def test_an_ensemble_with_reference_relative_shaping_matches_the_formula(rms):
    a, b, _ = rms
    spec = RewardModelSpec(paths=[a, b], ensemble="mean_minus_std", ensemble_k=0.5, reference_relative=True)
    with RewardScorer([RewardComponent("rm", model=spec)], timeout_s=5.0) as scorer:
        out = scorer.score(ITEMS)
    prompts, responses = [i.prompt for i in ITEMS], [i.completion for i in ITEMS]
    refs = [i.reference for i in ITEMS]
    r = ensemble_scores(np.stack([direct(p, prompts, responses) for p in (a, b)]), "mean_minus_std", 0.5)
    r_ref = ensemble_scores(np.stack([direct(p, prompts, refs) for p in (a, b)]), "mean_minus_std", 0.5)
    expected = 1 / (1 + np.exp(-(r - r_ref)))
    assert [o.reward for o in out] == pytest.approx(expected.tolist(), abs=1e-5)
    assert out[0].reward == pytest.approx(0.5, abs=1e-6)  # the completion *is* the reference: sigmoid(0)
    assert all(o.versions == {"rm": f"{model_version(a)}+{model_version(b)}"} for o in out)
    assert all(not o.failed for o in out)


def test_a_process_reward_model_scores_every_prefix_of_steps(rms):
    a, _, _ = rms
    comp = RewardComponent("prm", scope="process", step_split=" then ", step_aggregate="min",
                           model=RewardModelSpec(paths=[a]))
    with RewardScorer([comp], timeout_s=5.0) as scorer:
        out = scorer.score(ITEMS)
    steps = direct(a, ["4+5=", "4+5="], ["4", "4\n9"])  # prefixes of "4 then 9", joined by newlines
    assert out[2].reward == pytest.approx(aggregate_steps(steps, "min"), abs=1e-5)
    assert out[2].notes["prm"].startswith("steps=[")
    assert out[3].reward == 0.0 and out[3].notes["prm"] == "no steps" and not out[3].failed


def test_a_judge_whose_answers_do_not_parse_fails_those_samples_not_the_batch(rms):
    a, _, judge = rms
    comps = [RewardComponent("judge", model=RewardModelSpec(kind="judge", paths=[judge], max_new_tokens=4)),
             RewardComponent("exact", "exact_match", weight=0.0)]
    with RewardScorer(comps, timeout_s=5.0) as scorer:
        out = scorer.score(ITEMS[:2])
    # an untrained LM over this alphabet rarely writes a number in range: whatever it wrote is accounted for
    for o in out:
        assert o.components["exact"] in (0.0, 1.0)
        if o.failed:
            assert math.isnan(o.components["judge"]) and "gave no score in range" in o.error
        else:
            assert 0.0 <= o.components["judge"] <= 1.0
    assert out[0].versions == {"judge": model_version(judge)}


def test_rule_and_model_terms_combine_with_weights(rms):
    a, _, _ = rms
    comps = [RewardComponent("correct", "exact_match"),
             RewardComponent("rm", weight=0.5, model=RewardModelSpec(paths=[a]))]
    with RewardScorer(comps, timeout_s=5.0) as scorer:
        out = scorer.score(ITEMS[:2])
        assert set(scorer.last_seconds) == {"correct", "rm"}
    r = direct(a, ["5+7=", "5+7="], ["12", "13"])
    assert [o.reward for o in out] == pytest.approx([1.0 + 0.5 * r[0], 0.0 + 0.5 * r[1]], abs=1e-5)
    assert [o.components["rm"] for o in out] == pytest.approx(r.tolist(), abs=1e-5)
