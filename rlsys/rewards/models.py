"""Model-based rewards: a sequence-classification reward model, an LLM judge, and how to combine their scores.

Pure library code (no Ray): the reward actors wrap these. Every score is traceable to the weights that produced it
through :func:`model_version`, a content hash recorded with each reward, so a run's rewards can be tied to the
exact reward model even when the checkpoint directory is copied or overwritten.

* :class:`SequenceClassifierRM` scores ``prompt + response`` with an ``AutoModelForSequenceClassification`` head
  (one label: the reward is the logit), in the RM's own tokenizer and chat template.
* :class:`GenerativeJudge` asks a causal LM for a score in words through the rollout workers' generation engine
  (:class:`rlsys.engines.generation.HFEngine`) and parses it with :func:`parse_judge_score`.
* :func:`ensemble_scores` and :func:`reference_relative` turn raw scores from several models, or against a
  reference response, into one reward.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from rlsys.data.chat import has_chat_template
from rlsys.engines.generation import HFEngine
from rlsys.engines.padding import pad_sequences
from rlsys.model_source import ensure_pad_token
from rlsys.rewards.components import check_judge_template

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_VERSION_CACHE: dict[tuple, str] = {}


# ---- reward-model version ----


def model_version(path: str) -> str:
    """A 12-hex-digit sha256 of the checkpoint's ``config.json`` and weight files (``*.safetensors``, ``*.bin``).

    Only file names (relative to ``path``) and contents go in, so a copy of the directory has the same version and
    any change to the weights gives a new one. Cached per path, keyed also on each file's size and mtime, so a
    checkpoint overwritten in place is hashed again rather than reported with its old version.
    Raises ValueError when ``path`` is not a directory or holds neither config.json nor weights.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"reward model {path!r} is not a directory; give a local Hugging Face checkpoint directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.name == "config.json"
                                                                   or p.name.endswith(_WEIGHT_SUFFIXES)))
    if not files:
        raise ValueError(f"reward model {path!r} has no config.json or weight files (*.safetensors, *.bin); "
                         "save it with save_pretrained")
    stats = tuple((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    key = (str(root.resolve()), stats)
    if key not in _VERSION_CACHE:
        digest = hashlib.sha256()
        for p in files:
            name = p.relative_to(root).as_posix().encode()
            digest.update(len(name).to_bytes(8, "little") + name)  # length-prefixed: names cannot run together
            digest.update(p.stat().st_size.to_bytes(8, "little"))
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        _VERSION_CACHE[key] = digest.hexdigest()[:12]
    return _VERSION_CACHE[key]


# ---- formatting and tokenising (shared with training in rlsys.rewards.preference, so both see the same input) ----


def _require_dir(path: str, what: str) -> None:
    if not Path(path).expanduser().is_dir():
        raise ValueError(f"{what} {path!r} does not exist or is not a directory; give a local Hugging Face "
                         "checkpoint saved with save_pretrained (no hub downloads)")


def _load_tokenizer(path: str, what: str) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer, padding with EOS when it has no pad token. ``what``: "reward model", ...
    for the error message."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a missing or foreign one
        raise ValueError(f"could not load the tokenizer of {what} {path!r}: {type(e).__name__}: {e}; the checkpoint "
                         "directory needs the tokenizer files too (tokenizer.save_pretrained(dir))") from e
    return ensure_pad_token(tokenizer, f"{what} {path!r}")


def _rm_texts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> list[str]:
    """The text a reward model reads: the chat template's rendering of (user=prompt, assistant=response) when the
    tokenizer has a template, else ``prompt + response``."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
    if not has_chat_template(tokenizer):
        return [p + r for p, r in zip(prompts, responses)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                          tokenize=False) for p, r in zip(prompts, responses)]


def _max_positions(model: torch.nn.Module, max_length: int) -> int:
    """``max_length`` capped at what the model's position embeddings cover."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length


def _encode_end(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to its last ``max_length`` tokens (the response, at the end, matters most).

    A chat-template rendering already holds its special tokens, so none are added to it; plain text gets the
    tokenizer's usual ones (e.g. BOS). An empty encoding becomes a lone BOS/EOS/pad token so that every sequence
    has a last token to score.
    """
    if not texts:
        return []
    templated = has_chat_template(tokenizer)
    ids = tokenizer(texts, add_special_tokens=not templated, truncation=True, max_length=max_length)["input_ids"]
    filler = next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                  if t is not None)
    return [list(x) if len(x) else [filler] for x in ids]


# ---- sequence-classification reward model ----


class SequenceClassifierRM:
    """A reward model with a one-label sequence-classification head: reward(prompt, response) = its logit.

    The RM uses its own tokenizer (and chat template, if it has one), so it may differ from the policy's. Scores
    are computed in float32 under ``torch.no_grad``, ``batch_size`` texts at a time with similar lengths batched
    together, right-padded, so the head reads each text's last real token and a score does not depend on what else
    was in the batch. Texts longer than ``max_length`` tokens (capped at the model's position embeddings) keep
    their end.
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32, max_length: int = 512) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
        _require_dir(path, "reward model")
        self.tokenizer = _load_tokenizer(path, "reward model")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for broken or foreign ones
            raise ValueError(f"could not load reward model {path!r} as a sequence classifier: "
                             f"{type(e).__name__}: {e}") from e
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {path!r} has num_labels={model.config.num_labels}; a reward model needs "
                             "a single-logit head (num_labels=1)")
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of long texts
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.path = path
        self.version = model_version(path)
        self.batch_size = batch_size
        self.max_length = _max_positions(model, max_length)

    def texts(self, prompts: list[str], responses: list[str]) -> list[str]:
        """What the RM reads for each pair: its chat template over (user=prompt, assistant=response), or
        ``prompt + response`` when its tokenizer has no template."""
        return _rm_texts(self.tokenizer, prompts, responses)

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """float32 [N] rewards, in input order."""
        encoded = _encode_end(self.tokenizer, self.texts(prompts, responses), self.max_length)
        return _score_encoded(self.model, encoded, self.tokenizer.pad_token_id, self.batch_size, self.device)


@torch.no_grad()
def _score_encoded(model: torch.nn.Module, encoded: list[list[int]], pad_id: int, batch_size: int,
                   device: torch.device) -> np.ndarray:
    """One-label head outputs for token sequences, batched by length (less padding), returned in input order."""
    out = np.zeros(len(encoded), dtype=np.float32)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_sequences([encoded[i] for i in rows], pad_id, "right", device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        out[rows] = logits[:, 0].float().cpu().numpy()
    return out


# ---- generative judge ----

DEFAULT_JUDGE_TEMPLATE = (
    "You are grading a response to a task.\n\n"
    "Task:\n{prompt}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Response:\n{response}\n\n"
    "How correct and helpful is the response, judged against the reference answer? Reply with only a score from "
    "{low:g} (worst) to {high:g} (best), in the form \"Score: <number>\".\n"
)

# ASCII digits only: "\d" would also take e.g. Arabic-Indic or full-width digits. No nested quantifiers, so
# finditer stays linear in the text's length.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_KEYWORD = re.compile(r"(?<![A-Za-z])(?:score|rating|rate|grade|mark|verdict)(?:s|d)?(?![A-Za-z])", re.IGNORECASE)
# What may stand between a keyword and its number: punctuation, markup and a few filler words ("Score: **8**",
# "my final rating is [[7]]", "rating = 4"); anything else (e.g. "score from 0 to 10") breaks the link.
_GAP = re.compile(r"(?:[\s:=*#_\[\](){}\"'`>|~-]|\b(?:is|of|be|would|will|was|final|overall|i|it|a|an|give|gets?)\b)*",
                  re.IGNORECASE)
_MAX_GAP = 32
_MAX_DIGITS = 24  # longer digit runs are not scores (and float() of a megabyte of digits is not free)
_RANGE_LOW = re.compile(r"\s*(?:to|-|–)\s*-?[0-9]", re.IGNORECASE)
_RANGE_HIGH = re.compile(r"[0-9]\s*(?:to|-|–)\s*-?$")
_DENOMINATOR = re.compile(r"\s*(?:/|out\s+of)\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def parse_judge_score(text: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """A judge's score read from free text, normalised to [0, 1] as ``(x − low) / (high − low)``; None if the text
    has no usable score or the score is outside [low, high].

    Which number is the score: the last one that directly follows a score keyword ("Score: 7", "rating = 4 out of
    5", "Final grade: **8**"); if no keyword has one, the last number in the text ("I'd give it an 8.", "[[7]]").
    Numbers that are not candidates: denominators ("/10", "out of 10"), range bounds ("0 to 10", "1-10"), and
    numbers glued to letters ("gpt4", "3rd"). A minus sign makes a number negative only when it does not follow a
    digit or letter (so "1-10" is a range). When the score comes with an explicit denominator d ≠ high and
    low == 0 ("4/5" from a judge asked for 0–10), it is read on the judge's own scale: x / d.
    Linear time in the length of ``text`` (plain regular expressions without nested quantifiers).
    """
    if not high > low:
        raise ValueError(f"judge score range needs low < high, got low={low} high={high}")
    if not isinstance(text, str):
        return None
    spans = [m.span() for m in _NUMBER.finditer(text)]
    chosen = None
    if spans:
        starts = [a for a, _ in spans]
        for kw in reversed(list(_KEYWORD.finditer(text))):  # the last keyword that has a number right after it
            i = bisect.bisect_left(starts, kw.end())
            if i == len(spans) or starts[i] - kw.end() > _MAX_GAP + 1:  # first: slicing a long gap would be O(n)
                continue
            cand = _candidate(text, *spans[i])
            if cand is not None and _GAP.fullmatch(text, kw.end(), cand[0]):
                chosen = cand
                break
        for a, b in reversed(spans) if chosen is None else ():
            chosen = _candidate(text, a, b)
            if chosen is not None:
                break
    if chosen is None:
        return None
    _, value, den = chosen
    if den is not None and den != high and low == 0 and den > 0:
        return value / den if 0 <= value <= den else None
    if not low <= value <= high:
        return None
    return (value - low) / (high - low)


def _candidate(text: str, start: int, end: int) -> tuple[int, float, float | None] | None:
    """(start including a minus sign, value, explicit denominator or None) of the number at text[start:end], or
    None when that number cannot be a score (see :func:`parse_judge_score`). Looks at a few characters around it."""
    if (start and text[start - 1].isalpha()) or (end < len(text) and text[end].isalpha()) or end - start > _MAX_DIGITS:
        return None
    before = text[max(0, start - 12):start].lower()
    if before.rstrip().endswith(("/", "out of")):
        return None  # a denominator
    if _RANGE_LOW.match(text, end, end + 12) or _RANGE_HIGH.search(before):
        return None  # a bound of a range: "0 to 10", "1-10"
    value = float(text[start:end])
    if start and text[start - 1] == "-" and not (start >= 2 and text[start - 2].isalnum()):
        value, start = -value, start - 1
    den = _DENOMINATOR.match(text, end, end + 24)
    return start, value, float(den.group(1)) if den else None


class GenerativeJudge:
    """An LLM judge: ``template`` filled with (prompt, response, reference), greedy-decoded by the judge model
    through :class:`~rlsys.engines.generation.HFEngine`, and parsed with :func:`parse_judge_score`.

    The judge uses its own tokenizer, and its chat template when it has one (the filled template is the user
    message). Prompts longer than the model's position embeddings keep their end, where the instruction is.
    """

    def __init__(self, path: str, device: str = "cpu", template: str = DEFAULT_JUDGE_TEMPLATE, low: float = 0.0,
                 high: float = 10.0, max_new_tokens: int = 16, batch_size: int = 16) -> None:
        check_judge_template(template)
        if not high > low:
            raise ValueError(f"judge score range needs low < high, got low={low} high={high}")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
        _require_dir(path, "judge model")
        self.tokenizer = _load_tokenizer(path, "judge model")
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer of judge model {path!r} has no EOS token; generation could not stop")
        try:
            self.engine = HFEngine(path, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, device)
        except Exception as e:
            raise ValueError(f"could not load judge model {path!r} as a causal LM: {type(e).__name__}: {e}") from e
        self.tokenizer.truncation_side = "left"
        self.path = path
        self.version = model_version(path)
        self.template = template
        self.low, self.high = float(low), float(high)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._max_prompt = max(1, _max_positions(self.engine.model, 1 << 30) - max_new_tokens)

    def prompt_ids(self, prompts: list[str], responses: list[str], references: list[str]) -> list[list[int]]:
        """Token ids of the judge prompts (for inspection and tests)."""
        if not len(prompts) == len(responses) == len(references):
            raise ValueError(f"got {len(prompts)} prompts, {len(responses)} responses and {len(references)} "
                             "references; they must pair up")
        filled = [self.template.format(prompt=p, response=r, reference=ref, low=self.low, high=self.high)
                  for p, r, ref in zip(prompts, responses, references)]
        if has_chat_template(self.tokenizer):
            filled = [self.tokenizer.apply_chat_template([{"role": "user", "content": f}], tokenize=False,
                                                         add_generation_prompt=True) for f in filled]
        return _encode_end(self.tokenizer, filled, self._max_prompt)

    def judge(self, prompts: list[str], responses: list[str],
              references: list[str]) -> list[tuple[float | None, str]]:
        """(normalised score or None if unparseable, the judge's raw text) per item, in input order."""
        encoded = self.prompt_ids(prompts, responses, references)
        results: list[tuple[float | None, str]] = []
        for start in range(0, len(encoded), self.batch_size):
            completions = self.engine.generate(encoded[start:start + self.batch_size], self.max_new_tokens,
                                               temperature=1.0, greedy=True)
            for c in completions:
                raw = self.tokenizer.decode(c.token_ids.tolist(), skip_special_tokens=True)
                results.append((parse_judge_score(raw, self.low, self.high), raw))
        return results


# ---- combining scores ----

_ENSEMBLE_MODES = ("mean", "min", "mean_minus_std")


def ensemble_scores(scores: np.ndarray, mode: str = "mean", k: float = 1.0) -> np.ndarray:
    """One score per item from M reward models' scores [M, N] → [N].

    ``mean``: the average; ``min``: the most pessimistic member; ``mean_minus_std``: mean − k·std over members
    (population std, ddof=0), which penalises items the members disagree on -- where a single RM is most likely
    being exploited. NaNs propagate (a failed member's score makes the item's score NaN).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [members, items], got shape {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("ensemble_scores needs at least one member (scores has shape [0, N])")
    if mode == "mean":
        return scores.mean(axis=0)
    if mode == "min":
        return scores.min(axis=0)
    if mode == "mean_minus_std":
        return scores.mean(axis=0) - k * scores.std(axis=0)
    raise ValueError(f"unknown ensemble mode {mode!r}; use one of {', '.join(_ENSEMBLE_MODES)}")


def reference_relative(r: np.ndarray, r_ref: np.ndarray) -> np.ndarray:
    """σ(r − r_ref): the Bradley–Terry probability that the response beats the reference response, in (0, 1).

    Computed as exp(−log(1 + exp(−x))) with ``logaddexp``, so large |x| neither overflows nor loses the tail.
    """
    x = np.asarray(r, dtype=np.float64) - np.asarray(r_ref, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


__all__ = ["DEFAULT_JUDGE_TEMPLATE", "GenerativeJudge", "SequenceClassifierRM", "ensemble_scores", "model_version",
           "parse_judge_score", "reference_relative"]
