"""Tests for rlsys.rewards.models and rlsys.rewards.preference with real, locally built models (no mocks).

A tiny sequence-classification RM is trained here in a few seconds on a preference a transformer learns at once
(a response must be wrapped in parentheses); the judge is a tiny causal LM, trained for a few seconds where its
output must be parseable.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlsys.config import WarmupConfig
from rlsys.data.chat import PromptFormat
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import make_arithmetic_rows
from rlsys.data.tokenizer import build_char_tokenizer, save_char_tokenizer
from rlsys.data.warmup import supervised_warmup
from rlsys.rewards.models import (
    DEFAULT_JUDGE_TEMPLATE,
    GenerativeJudge,
    SequenceClassifierRM,
    ensemble_scores,
    model_version,
    parse_judge_score,
    reference_relative,
)
from rlsys.rewards.preference import (
    addition_preference_pairs,
    pairwise_accuracy,
    preference_loss,
    train_preference_rm,
)
from rlsys.types import Prompt

TINY_RM = dict(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=48)


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def paren_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected): the preferred response is the digits wrapped in parentheses; the rejected one
    misses one or both of them. Learning it needs attention back to the response's start (the rejected "12)"
    ends like the chosen "(12)")."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt = f"{rng.randint(0, 99)}+{rng.randint(0, 99)}="
        digits = str(rng.randint(0, 999))
        rejected = rng.choice([digits, f"({digits}", f"{digits})", f"{digits})"])
        pairs.append((prompt, f"({digits})", rejected))
    return pairs


@pytest.fixture(scope="module")
def char_tokenizer_dir(tmp_path_factory) -> str:
    return str(save_char_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, char_tokenizer_dir) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("rm") / "rm"
    stats = train_preference_rm(out, char_tokenizer_dir, paren_pairs(512, seed=0), steps=120, lr=3e-3,
                                batch_size=32, seed=0, **TINY_RM)
    return str(out), stats


# ---- training a preference RM and ranking held-out pairs ----


def test_trained_rm_ranks_held_out_pairs_and_untrained_does_not(trained_rm, char_tokenizer_dir, tmp_path) -> None:
    path, stats = trained_rm
    held_out = paren_pairs(300, seed=1)
    assert not {p[1:] for p in held_out} <= {p[1:] for p in paren_pairs(512, seed=0)}
    rm = SequenceClassifierRM(path)
    assert pairwise_accuracy(rm, held_out) >= 0.95
    assert stats["final_loss"] < stats["initial_loss"] and stats["train_accuracy"] >= 0.95
    assert stats["steps"] == 120 and stats["num_pairs"] == 512 and stats["init"] == "scratch"
    assert stats["version"] == rm.version == model_version(path)

    untrained = tmp_path / "untrained"
    train_preference_rm(untrained, char_tokenizer_dir, paren_pairs(16, seed=0), steps=0, seed=0, **TINY_RM)
    assert pairwise_accuracy(SequenceClassifierRM(str(untrained)), held_out) < 0.9


def test_training_is_deterministic_given_the_seed(char_tokenizer_dir, tmp_path) -> None:
    pairs = paren_pairs(64, seed=2)
    runs = [train_preference_rm(tmp_path / f"rm{i}", char_tokenizer_dir, pairs, steps=5, seed=3, **TINY_RM)
            for i in range(2)]
    assert runs[0]["losses"] == runs[1]["losses"]
    assert runs[0]["version"] == runs[1]["version"]


def test_preference_loss_is_bradley_terry() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = np.mean([-math.log(1 / (1 + math.exp(-d))) for d in (2.0, 0.0, -2.0)])
    assert preference_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # No overflow for huge margins: the loss is ~0 for a confident right answer, ~margin for a confident wrong one.
    assert preference_loss(torch.tensor([1e4]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert preference_loss(torch.tensor([0.0]), torch.tensor([1e4])).item() == pytest.approx(1e4)


# ---- SequenceClassifierRM ----


def test_scores_do_not_depend_on_batch_composition(trained_rm) -> None:
    path, _ = trained_rm
    rng = random.Random(5)
    prompts = [f"{rng.randint(0, 99)}+{rng.randint(0, 9999)}=" for _ in range(37)]
    responses = ["(" * rng.randint(0, 2) + str(rng.randint(0, 10 ** rng.randint(1, 12))) + ")" for _ in prompts]
    batched = SequenceClassifierRM(path, batch_size=8).score(prompts, responses)
    one_by_one = SequenceClassifierRM(path, batch_size=1).score(prompts, responses)
    assert batched.dtype == np.float32 and batched.shape == (37,)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    order = list(reversed(range(37)))  # and in input order, whatever the length-sorted batching did
    shuffled = SequenceClassifierRM(path, batch_size=8).score([prompts[i] for i in order],
                                                              [responses[i] for i in order])
    np.testing.assert_allclose(shuffled, batched[order], atol=1e-5)
    assert SequenceClassifierRM(path).score([], []).shape == (0,)


def test_chat_template_is_used_when_the_tokenizer_has_one(trained_rm, tmp_path) -> None:
    path, _ = trained_rm
    rm = SequenceClassifierRM(path)
    assert rm.texts(["1+2="], ["(3)"]) == ["1+2=(3)"]  # no template: plain concatenation

    templated = tmp_path / "templated"
    shutil.copytree(path, templated)
    tok = AutoTokenizer.from_pretrained(templated)
    tok.chat_template = "{% for m in messages %}{{ '(' if m['role'] == 'user' else '=' }}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(templated)
    rm_t = SequenceClassifierRM(str(templated))
    assert rm_t.texts(["1+2="], ["(3)"]) == ["(1+2==(3)"]
    assert rm_t.version == rm.version  # same weights and config: the tokenizer is not part of the version
    # The score is the score of the rendered text, tokenised without extra special tokens.
    assert rm_t.score(["1+2="], ["(3)"])[0] == pytest.approx(rm.score(["(1+2="], ["=(3)"])[0], abs=1e-6)


def test_truncation_keeps_the_end_of_the_text(trained_rm) -> None:
    path, _ = trained_rm
    rm = SequenceClassifierRM(path, max_length=8)
    long_a, long_b = "1+" * 40 + "5=", "9*" * 30 + "1+5="  # different starts, the same last 8 characters
    tail = (long_a + "(123)")[-8:]
    assert tail == (long_b + "(123)")[-8:]
    s = rm.score([long_a, long_b, ""], ["(123)", "(123)", tail])
    assert s[0] == pytest.approx(s[2], abs=1e-6) and s[1] == pytest.approx(s[2], abs=1e-6)
    # max_length is capped by the model's position embeddings (48 here).
    assert SequenceClassifierRM(path, max_length=4096).max_length == TINY_RM["max_position_embeddings"]


def test_bad_checkpoints_give_clear_errors(tmp_path, char_tokenizer_dir) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="nope.*does not exist"):
        SequenceClassifierRM(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load the tokenizer of reward model.*empty"):
        SequenceClassifierRM(str(tmp_path / "empty"))

    tok = AutoTokenizer.from_pretrained(char_tokenizer_dir)
    two = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id))
    two.save_pretrained(tmp_path / "two")
    tok.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="num_labels=2"):
        SequenceClassifierRM(str(tmp_path / "two"))
    tok.save_pretrained(tmp_path / "tokenizer_only")
    with pytest.raises(ValueError, match="could not load reward model.*tokenizer_only"):
        SequenceClassifierRM(str(tmp_path / "tokenizer_only"))


def test_tokenizer_without_pad_token_pads_with_eos(trained_rm, tmp_path) -> None:
    path, _ = trained_rm
    nopad = tmp_path / "nopad"
    shutil.copytree(path, nopad)
    tok = build_char_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(nopad)
    rm = SequenceClassifierRM(str(nopad), batch_size=4)
    assert rm.tokenizer.pad_token_id == rm.tokenizer.eos_token_id == rm.model.config.pad_token_id
    prompts, responses = ["1+1=", "12+34=", "5="], ["(2)", "(46)", "7"]
    np.testing.assert_allclose(rm.score(prompts, responses), SequenceClassifierRM(str(nopad), batch_size=1).score(
        prompts, responses), atol=1e-5)


def test_model_version_is_a_content_hash(trained_rm, tmp_path) -> None:
    path, _ = trained_rm
    version = model_version(path)
    assert len(version) == 12 and all(c in "0123456789abcdef" for c in version)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert model_version(str(copy)) == version

    model = LlamaForSequenceClassification.from_pretrained(copy)
    with torch.no_grad():
        model.score.weight.add_(0.01)
    time.sleep(0.01)  # a distinct mtime, though the cache is also keyed on size and name
    model.save_pretrained(copy)
    assert model_version(str(copy)) != version
    assert model_version(path) == version
    with pytest.raises(ValueError, match="not a directory"):
        model_version(str(tmp_path / "missing"))


# ---- parse_judge_score ----


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("Score: 7", {}, 0.7),
        ("score = 7/10", {}, 0.7),
        ("Rating: 4 out of 5", {"high": 5}, 0.8),
        ("**8**", {}, 0.8),
        ("[[7]]", {}, 0.7),
        ("7.5", {}, 0.75),
        ("I'd give it an 8.", {}, 0.8),
        ("Score:10", {}, 1.0),
        ("Score: 0", {}, 0.0),
        ("My final rating is [[7]]", {}, 0.7),
        ("I would rate it 8 out of 10", {}, 0.8),
        # several numbers: the one after a score keyword wins; else the last one
        ("Score: 7. It has 3 mistakes in 12 lines.", {}, 0.7),
        ("The response has 2 bugs. Overall I'd say 6", {}, 0.6),
        ("Asked for a score from 0 to 10. Score: 9", {}, 0.9),
        ("On a scale of 1-10 I think 6", {}, 0.6),
        ("score: 2 ... on reflection 9", {}, 0.2),
        ("Score: 4/5", {}, 0.8),  # a judge that answered on its own scale
        # negative numbers and ranges
        ("Score: -3", {}, None),
        ("Score: -3", {"low": -5, "high": 5}, 0.2),
        ("Score: 7-8", {}, None),
        # out of range
        ("Score: 15", {}, None),
        ("Score: 10.5", {}, None),
        ("The response has 12 errors", {}, None),
        # malformed and adversarial
        ("", {}, None),
        ("   \n\t", {}, None),
        ("no number here", {}, None),
        ("[[[7", {}, 0.7),
        ("7]]]]", {}, 0.7),
        ("(((((", {}, None),
        ("\udcff\x00 7 \ufffd\x7f", {}, 0.7),
        ("Score: ７", {}, None),  # full-width digits are not ASCII digits
        ("Score: ٣", {}, None),  # nor are Arabic-Indic ones
        ("gpt4 says hi", {}, None),
        ("1e5", {}, None),
        ("Score: " + "9" * 5000, {}, None),
    ],
)
def test_parse_judge_score(text: str, kwargs: dict, expected: float | None) -> None:
    got = parse_judge_score(text, **kwargs)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["9" * 1_000_000, "score: " * 300_000, "-" * 1_000_000 + "5", "[[" * 500_000, "1.1." * 250_000,
     "score 1 to 2 " * 80_000, "gpt4 " * 200_000, "a" * 1_000_000],
)
def test_parse_judge_score_is_linear_on_huge_inputs(text: str) -> None:
    start = time.perf_counter()
    parse_judge_score(text)
    assert time.perf_counter() - start < 2.0


def test_parse_judge_score_rejects_an_empty_range() -> None:
    assert parse_judge_score(None) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low < high"):
        parse_judge_score("5", low=10, high=0)


# ---- GenerativeJudge ----


def _tiny_causal_lm(directory: Path, alphabet: str, seed: int = 0) -> tuple[LlamaForCausalLM, object]:
    from rlsys.config import ModelConfig

    tok = build_char_tokenizer(alphabet)
    model = build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                         max_position_embeddings=64, seed=seed), tok)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


def test_judge_with_unparseable_output_returns_none(tmp_path) -> None:
    # A random model over a vocabulary without digits can never write a number.
    _tiny_causal_lm(tmp_path / "judge", "abcdefgh :")
    judge = GenerativeJudge(str(tmp_path / "judge"), max_new_tokens=6, batch_size=3)
    out = judge.judge(["ab", "c", "dd", "e" * 100, ""], ["ha", "", "b", "a", "cab"], ["h", "h", "h", "h", "h"])
    assert len(out) == 5
    assert all(score is None and isinstance(raw, str) for score, raw in out)
    assert judge.version == model_version(str(tmp_path / "judge"))
    # Prompts longer than the model's positions keep their end (where the instruction is).
    assert all(len(ids) <= 64 - 6 for ids in judge.prompt_ids(["a" * 500], ["b"], ["c"]))


def test_trained_judge_gives_normalised_scores(tmp_path) -> None:
    # A judge trained for a second to answer with the response's last digit: a score from 0 to 9 that depends on
    # the input, so the test sees each item's own score come back, normalised, in input order.
    template = "{response}>"
    model, tok = _tiny_causal_lm(tmp_path / "judge", "0123456789>")
    rng = random.Random(0)
    rows = [Prompt("x", template.format(response=r), r[-1]) for r in (str(rng.randint(0, 999)) for _ in range(400))]
    supervised_warmup(model, PromptFormat.raw(tok), rows, WarmupConfig(steps=300, batch_size=32, lr=3e-3), seed=0)
    model.save_pretrained(tmp_path / "judge")

    judge = GenerativeJudge(str(tmp_path / "judge"), template=template, low=0, high=9, max_new_tokens=4,
                            batch_size=4)
    responses = [str(rng.randint(0, 99)) + str(d) for d in range(10)]
    out = judge.judge(["ignored"] * 10, responses, ["ignored"] * 10)
    scores = [s for s, _ in out]
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores), out
    assert sum(s == pytest.approx(d / 9) for d, s in enumerate(scores)) >= 8, out


def test_judge_template_is_checked_at_construction(tmp_path) -> None:
    _tiny_causal_lm(tmp_path / "judge", "abc")
    path = str(tmp_path / "judge")
    with pytest.raises(ValueError, match="unknown placeholder.*answer"):
        GenerativeJudge(path, template="{prompt} {response} {answer}")
    with pytest.raises(ValueError, match="no \\{response\\}"):
        GenerativeJudge(path, template="{prompt} {reference}")
    with pytest.raises(ValueError, match="not a valid format string"):
        GenerativeJudge(path, template="{response} {")
    with pytest.raises(ValueError, match="does not format"):
        GenerativeJudge(path, template="{response:d}")
    with pytest.raises(ValueError, match="unknown placeholder"):
        GenerativeJudge(path, template="{} {response}")
    with pytest.raises(ValueError, match="does not exist"):
        GenerativeJudge(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="low < high"):
        GenerativeJudge(path, low=5, high=5)
    judge = GenerativeJudge(path, high=5)
    assert judge.template == DEFAULT_JUDGE_TEMPLATE and (judge.low, judge.high) == (0.0, 5.0)


def test_default_template_fills_every_placeholder() -> None:
    text = DEFAULT_JUDGE_TEMPLATE.format(prompt="P?", response="R!", reference="REF", low=0.0, high=5.0)
    assert "P?" in text and "R!" in text and "REF" in text and "from 0 (worst) to 5 (best)" in text


# ---- combining scores ----


def test_ensemble_scores_hand_computed() -> None:
    scores = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]])
    np.testing.assert_allclose(ensemble_scores(scores), [2.0, 0.0, 0.0])
    np.testing.assert_allclose(ensemble_scores(scores, "min"), [1.0, 0.0, -2.0])
    # population std: [1, 0, 2]
    np.testing.assert_allclose(ensemble_scores(scores, "mean_minus_std"), [1.0, 0.0, -2.0])
    np.testing.assert_allclose(ensemble_scores(scores, "mean_minus_std", k=0.5), [1.5, 0.0, -1.0])
    np.testing.assert_allclose(ensemble_scores(np.array([[0.5, 1.5]]), "mean_minus_std"), [0.5, 1.5])
    with pytest.raises(ValueError, match="unknown ensemble mode 'median'"):
        ensemble_scores(scores, "median")
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_scores(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="members, items"):
        ensemble_scores(np.zeros(3))


def test_reference_relative_hand_computed() -> None:
    r = np.array([0.0, 1.0, -1.0, 1000.0, -1000.0])
    got = reference_relative(r, np.zeros(5))
    e = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(got, [0.5, e, 1 - e, 1.0, 0.0], atol=1e-12)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(reference_relative(np.array([3.0]), np.array([2.0])), [e])


# ---- the embedded addition task ----


def test_addition_preference_pairs_are_correct_vs_plausibly_wrong() -> None:
    prompts = [Prompt(r["id"], r["prompt"], r["answer"]) for r in make_arithmetic_rows(2, 300, seed=0)]
    pairs = addition_preference_pairs(prompts, seed=0)
    assert pairs == addition_preference_pairs(prompts, seed=0)
    assert pairs != addition_preference_pairs(prompts, seed=1)
    assert len(pairs) == len(prompts)
    for p, (prompt, chosen, rejected) in zip(prompts, pairs):
        a, b = map(int, p.text[:-1].split("+"))
        assert prompt == p.text and chosen == p.answer == str(a + b)
        assert rejected.isdigit() and rejected == str(int(rejected)) and int(rejected) != a + b
        assert abs(len(rejected) - len(chosen)) <= 1


@pytest.mark.slow
def test_rm_from_warmed_up_policy_learns_addition(tiny_policy, tmp_path) -> None:
    # The conftest policy is warmed up briefly on 400 prompts; the RM gets its own 3000 (2 wrong answers each) so
    # that it learns to check sums rather than memorise pairs. ~30 s of training on 2 cores (0.5 at step 0).
    model_dir, _ = tiny_policy
    held_out = [Prompt(r["id"], r["prompt"], r["answer"]) for r in make_arithmetic_rows(2, 200, seed=99)]
    rows = make_arithmetic_rows(2, 3000, seed=5, exclude={p.text for p in held_out})
    train = [Prompt(r["id"], r["prompt"], r["answer"]) for r in rows]
    pairs = [x for seed in range(2) for x in addition_preference_pairs(train, seed)]
    stats = train_preference_rm(tmp_path / "rm", model_dir, pairs, init_from=model_dir, steps=800, lr=3e-4,
                                batch_size=64, seed=0)
    rm = SequenceClassifierRM(str(tmp_path / "rm"))
    held_out_pairs = addition_preference_pairs(held_out, seed=7)
    accuracy = pairwise_accuracy(rm, held_out_pairs)
    assert accuracy >= 0.7, (accuracy, {k: v for k, v in stats.items() if k != "losses"})
    assert stats["init"] == model_dir and stats["final_loss"] < stats["initial_loss"]
