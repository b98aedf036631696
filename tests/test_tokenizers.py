"""Tokenizers as checkpoints ship them: one without a pad token is padded with its EOS token everywhere the policy is
loaded (data checks and warm-up, rollout, learner, reference, evaluation, reward models), and padding that is also
EOS never enters a loss mask or ends a response early. Real tokenizer and model, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from rlsys.actors.rollout import RolloutWorker
from rlsys.cli import main
from rlsys.config import ConfigError, ModelConfig, load_config
from rlsys.data.model import build_tiny_llama
from rlsys.data.tokenizer import build_char_tokenizer
from rlsys.engines.training import TrainBatch
from rlsys.prepare import prepare


def _checkpoint_without_a_pad_token(directory, eos: bool = True, pad: bool = False):
    tok = build_char_tokenizer()
    build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), tok
                     ).save_pretrained(directory)
    if not pad:
        tok.pad_token = None
    if not eos:
        tok.eos_token = None
    tok.save_pretrained(directory)
    assert (AutoTokenizer.from_pretrained(directory).pad_token_id is None) != pad
    return directory


def _config(tmp_path, ckpt, *extra):
    return load_config(None, [f"model.path={ckpt}", "warmup.steps=0", f"output.cache_dir={tmp_path / 'cache'}",
                              f"output.root={tmp_path / 'runs'}", "task.num_train=40", "task.num_eval=8",
                              "rollout.group_size=4", "rollout.max_new_tokens=6", *extra])


def test_a_policy_without_a_pad_token_generates_and_builds_loss_masks_with_eos_as_pad(tmp_path):
    ckpt = _checkpoint_without_a_pad_token(tmp_path / "ckpt")
    cfg = _config(tmp_path, ckpt)
    prepared = prepare(cfg)
    tok = AutoTokenizer.from_pretrained(prepared.model_dir)  # what every actor loads
    assert tok.pad_token_id == tok.eos_token_id is not None
    # A real rollout worker (the class itself, in this process): before, pad_token_id=None crashed generate().
    batch, n = RolloutWorker(0, prepared.model_dir, cfg.rollout, cfg.task).generate(0, prepared.train_prompts[:3])
    samples = [s for g in batch.groups for s in g.samples]
    assert n == len(samples) == 12
    for s in samples:
        eos = np.flatnonzero(s.response_ids == tok.eos_token_id)
        # a response ends at its first EOS: padding after it (also EOS) is not part of it
        assert (list(eos) == [len(s.response_ids) - 1]) if s.finish_reason == "stop" else (len(eos) == 0)
        assert 1 <= len(s.response_ids) <= cfg.rollout.max_new_tokens
    train = TrainBatch.build(
        prompts=[s.prompt_ids for s in samples], responses=[s.response_ids for s in samples],
        behaviour=[s.behaviour_logprobs for s in samples], trainable=np.ones(len(samples)),
        loss_weight=np.ones(len(samples)), token_weight=np.ones(len(samples)), minibatch=np.zeros(len(samples), int),
        pad_id=tok.pad_token_id)
    # the loss mask counts exactly the response tokens, though the padding has the EOS id
    assert train.mask.sum().item() == sum(len(s.response_ids) for s in samples)
    assert train.attention_mask.sum().item() == sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)


def test_rlsys_eval_of_a_checkpoint_without_a_pad_token(tmp_path, capsys):
    ckpt = _checkpoint_without_a_pad_token(tmp_path / "ckpt")
    assert main(["eval", str(ckpt), f"output.cache_dir={tmp_path / 'cache'}", "task.num_train=40",
                 "task.num_eval=8"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_a_tokenizer_with_neither_pad_nor_eos_is_refused_naming_the_checkpoint(tmp_path):
    ckpt = _checkpoint_without_a_pad_token(tmp_path / "ckpt", eos=False)
    with pytest.raises(ConfigError, match=rf"tokenizer of model.path='{ckpt}' has neither a pad nor an EOS token"):
        prepare(_config(tmp_path, ckpt))


def test_a_policy_tokenizer_without_an_eos_token_is_warned_about(tmp_path, caplog):
    """Nothing can end a response before max_new_tokens: allowed (a task may want fixed-length answers), said."""
    ckpt = _checkpoint_without_a_pad_token(tmp_path / "ckpt", eos=False, pad=True)
    with caplog.at_level("WARNING", logger="rlsys.prepare"):
        prepare(_config(tmp_path, ckpt))
    assert any("has no EOS token: no response can end before rollout.max_new_tokens" in r.getMessage()
               for r in caplog.records)
