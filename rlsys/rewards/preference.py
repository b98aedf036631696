"""Training a reward model on preference pairs (Bradley–Terry), and preference data for the embedded addition task.

The trained RM is an ordinary Hugging Face sequence-classification checkpoint with one label, so
:class:`rlsys.rewards.models.SequenceClassifierRM` loads it like any other RM; training reads its inputs exactly as
the RM scores them (same text formatting, same truncation), so what it learned is what gets scored.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from rlsys.config import ModelConfig
from rlsys.data.model import build_tiny_llama
from rlsys.engines.padding import pad_sequences
from rlsys.model_source import ensure_pad_token
from rlsys.rewards.models import (
    SequenceClassifierRM,
    _encode_end,
    _max_positions,
    _rm_texts,
    _score_encoded,
    model_version,
)
from rlsys.types import Prompt

log = logging.getLogger(__name__)

Pair = tuple[str, str, str]  # (prompt, chosen response, rejected response)

_STATS_PAIRS = 1024  # initial/final loss and train accuracy are measured on at most this many pairs


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry negative log-likelihood: mean over pairs of −log σ(r_chosen − r_rejected).

    Written as softplus(−(r_c − r_r)), which equals −log σ(r_c − r_r) without overflow for large margins.
    """
    return F.softplus(rejected - chosen).mean()


def train_preference_rm(
    out_dir: str | Path,
    tokenizer_dir: str,
    pairs: list[Pair],
    *,
    init_from: str | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 64,
    steps: int = 200,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Train a one-label ``LlamaForSequenceClassification`` RM on ``(prompt, chosen, rejected)`` pairs and save it
    (model and tokenizer, ``save_pretrained``) to ``out_dir``; returns training stats.

    The model is either random with the given sizes (intermediate size 3 × hidden, like the tiny policy), or, with
    ``init_from`` (a causal-LM checkpoint such as the warmed-up policy), that model's trunk under a new score
    head -- a policy that can already do the task knows most of what the RM must check (the size arguments are
    then ignored). ``tokenizer_dir`` must hold the tokenizer the trunk was trained with. Each of the ``steps``
    AdamW steps takes ``batch_size`` random pairs and minimises :func:`preference_loss`, with a 5% linear warm-up
    and a cosine decay of the rate to 0.1·lr. Texts are formatted and truncated exactly as
    :class:`~rlsys.rewards.models.SequenceClassifierRM` will score them. Same ``seed``, device and thread count:
    same weights. ``device`` trains on e.g. "cuda".

    On the addition task (``init_from`` the warmed-up policy of rlsys/configs/default.yaml; 4 wrong answers per
    training prompt: :func:`addition_preference_pairs` with 4 seeds), steps=1200, lr=3e-4, batch_size=64 ranked
    ~95% of held-out pairs correctly after ~50 s on 2 CPU cores; the defaults suit small synthetic preferences.

    Stats: ``initial_loss``/``final_loss`` (Bradley–Terry loss over up to 1024 training pairs, eval mode),
    ``train_accuracy`` (pairwise accuracy on those pairs after training), ``seconds`` (training alone),
    ``steps``, ``num_pairs``, ``init`` (``init_from`` or "scratch"), ``losses`` (per training step), ``version``
    (the saved RM's :func:`~rlsys.rewards.models.model_version`).
    """
    if not pairs:
        raise ValueError("train_preference_rm needs at least one (prompt, chosen, rejected) pair")
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 0, batch_size >= 1 and lr > 0; got steps={steps}, batch_size={batch_size}, "
                         f"lr={lr}")
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(tokenizer_dir), repr(tokenizer_dir))
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    torch.manual_seed(seed)
    model = _build_rm(tokenizer, init_from, hidden_size, num_layers, num_heads, max_position_embeddings, seed)
    dev = torch.device(device)
    model.to(dev)

    max_length = _max_positions(model, 1 << 30)
    prompts, chosen, rejected = zip(*pairs)
    enc_chosen = _encode_end(tokenizer, _rm_texts(tokenizer, list(prompts), list(chosen)), max_length)
    enc_rejected = _encode_end(tokenizer, _rm_texts(tokenizer, list(prompts), list(rejected)), max_length)
    stat_rows = random.Random(seed).sample(range(len(pairs)), min(_STATS_PAIRS, len(pairs)))

    def evaluate() -> tuple[float, float]:
        model.eval()
        sc = _score_encoded(model, [enc_chosen[i] for i in stat_rows], tokenizer.pad_token_id, 256, dev)
        sr = _score_encoded(model, [enc_rejected[i] for i in stat_rows], tokenizer.pad_token_id, 256, dev)
        with torch.no_grad():
            loss = preference_loss(torch.from_numpy(sc), torch.from_numpy(sr)).item()
        return loss, float((sc > sr).mean())

    initial_loss, _ = evaluate()
    start = time.perf_counter()
    losses = _train(model, enc_chosen, enc_rejected, tokenizer.pad_token_id, steps, lr, batch_size, seed, dev)
    seconds = time.perf_counter() - start
    final_loss, train_accuracy = evaluate()

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("preference RM: %d steps in %.1fs, loss %.3f → %.3f, train accuracy %.3f", steps, seconds,
             initial_loss, final_loss, train_accuracy)
    return {"initial_loss": initial_loss, "final_loss": final_loss, "train_accuracy": train_accuracy,
            "seconds": seconds, "steps": steps, "num_pairs": len(pairs), "init": init_from or "scratch",
            "losses": losses, "version": model_version(str(out_dir))}


def _build_rm(tokenizer, init_from: str | None, hidden_size: int, num_layers: int, num_heads: int,
              max_position_embeddings: int, seed: int) -> PreTrainedModel:
    if init_from is not None:
        if not Path(init_from).expanduser().is_dir():
            raise ValueError(f"init_from={init_from!r} is not a checkpoint directory; give a causal-LM checkpoint "
                             "(e.g. the warmed-up policy that rlsys.prepare.prepare() caches) or None for random init")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point here, not a problem
        try:
            model = AutoModelForSequenceClassification.from_pretrained(init_from, num_labels=1, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
        vocab = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model in {init_from!r} has "
                             f"{vocab} embeddings; use the tokenizer the checkpoint was trained with")
    else:
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        size = ModelConfig(hidden_size=hidden_size, intermediate_size=3 * hidden_size, num_layers=num_layers,
                           num_heads=num_heads, max_position_embeddings=max_position_embeddings, seed=seed)
        model = build_tiny_llama(size, tokenizer, reward_head=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.float()


def _train(model: PreTrainedModel, enc_chosen: list[list[int]], enc_rejected: list[list[int]], pad_id: int,
           steps: int, lr: float, batch_size: int, seed: int, device: torch.device,
           on_step=None) -> list[float]:
    """AdamW on the Bradley–Terry loss; chosen and rejected go through the model as one right-padded batch.

    The learning rate warms up linearly over the first 5% of steps, then follows a cosine from ``lr`` down to
    0.1·lr: on the addition task this reached a given held-out accuracy in fewer steps than a constant rate (and
    kept improving where the constant rate plateaued).

    ``on_step(step, model)`` (optional) is called after each step, e.g. to track held-out accuracy; the model is
    put back in train mode afterwards. Returns the per-step training losses.
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warm = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))))
    n = len(enc_chosen)
    losses = []
    model.train()
    for step in range(steps):
        rows = rng.sample(range(n), batch_size) if batch_size <= n else [rng.randrange(n) for _ in range(batch_size)]
        ids, mask = pad_sequences([enc_chosen[i] for i in rows] + [enc_rejected[i] for i in rows], pad_id, "right",
                                  device)
        scores = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        loss = preference_loss(scores[:len(rows)], scores[len(rows):])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, model)
            model.train()
    model.eval()
    return losses


# ---- the embedded addition task ----


def addition_preference_pairs(prompts: list[Prompt], seed: int) -> list[Pair]:
    """One (prompt, correct answer, plausible wrong answer) pair per addition prompt ("12+34=", answer "46").

    Responses are what the policy's completions decode to: the answer digits (EOS dropped by
    ``skip_special_tokens``). The wrong answer is, in proportions 2:2:1, off by a small amount (±1..±10, as a
    carry slip gives), one digit changed, or one digit dropped or added -- the last because a policy that stops
    early or runs on must not be rewarded for it. Deterministic given ``seed``.
    """
    rng = random.Random(seed)
    return [(p.text, p.answer, _wrong_answer(p.answer, rng)) for p in prompts]


def _wrong_answer(answer: str, rng: random.Random) -> str:
    """A canonical non-negative integer string (no leading zeros) whose value differs from ``answer``'s."""
    value = int(answer)
    for _ in range(100):
        kind = rng.choices(("off", "digit", "length"), weights=(2, 2, 1))[0]
        if kind == "off":
            wrong = str(value + rng.choice([d for d in range(-10, 11) if d]))
        elif kind == "digit":
            i = rng.randrange(len(answer))
            wrong = answer[:i] + rng.choice("0123456789".replace(answer[i], "")) + answer[i + 1:]
        elif len(answer) > 1 and rng.random() < 0.5:
            i = rng.randrange(len(answer))
            wrong = answer[:i] + answer[i + 1:]
        else:
            i = rng.randrange(len(answer) + 1)
            wrong = answer[:i] + rng.choice("0123456789") + answer[i:]
        if wrong.isdigit() and wrong == str(int(wrong)) and int(wrong) != value:
            return wrong  # rejected: negative, a leading zero ("07"), or the same value ("00" for "0")
    return str(value + 1)


def pairwise_accuracy(rm: SequenceClassifierRM, pairs: list[Pair]) -> float:
    """Fraction of pairs where the RM scores the chosen response strictly above the rejected one (ties count as
    wrong: an RM that cannot tell them apart gives no learning signal)."""
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair")
    prompts, chosen, rejected = (list(x) for x in zip(*pairs))
    return float((rm.score(prompts, chosen) > rm.score(prompts, rejected)).mean())
