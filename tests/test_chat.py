"""Prompts as conversations and responses that stop where the checkpoint says: rlsys.data.chat.PromptFormat and the
generation engine's end tokens and stop strings, with real tokenizers and a real (tiny) model; no Ray."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from rlsys.actors.rollout import RolloutWorker
from rlsys.config import ConfigError, ModelConfig, TaskConfig, load_config
from rlsys.data.chat import PromptFormat
from rlsys.data.model import build_tiny_llama
from rlsys.data.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer
from rlsys.engines.generation import HFEngine
from rlsys.types import Prompt

# A ChatML-like template that writes the BOS itself, as Llama-3's does (SmolLM2's writes none).
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")
ALPHABET = DEFAULT_ALPHABET + string.ascii_letters + "[].,?!'\n"


def char_tokenizer(template: str | None = TEMPLATE, bos_in_encoding: bool = False):
    """The project's character tokenizer, with a chat template; ``bos_in_encoding``: plain encoding adds a BOS, as
    Llama's and Mistral's tokenizers do (its post-processor)."""
    from tokenizers import processors

    tok = build_char_tokenizer(ALPHABET)
    if template:
        tok.chat_template = template
    if bos_in_encoding:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


def task(**kw) -> TaskConfig:
    return TaskConfig(**kw)


def test_chat_rendering_writes_each_special_token_once():
    tok = char_tokenizer(bos_in_encoding=True)
    fmt = PromptFormat.of(tok, task())  # auto: the tokenizer has a template
    assert fmt.chat
    p = Prompt("p0", "2+3=", "5")
    text = fmt.render(p)
    assert text == "<bos>[user]2+3=<eos>[assistant]"
    ids = fmt.encode(p)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's, not a second one
    assert tok.decode(ids) == text  # the ids are the rendering, nothing added or lost


def test_raw_text_gets_the_tokenizers_special_tokens_unless_it_already_has_them():
    tok = char_tokenizer(template=None, bos_in_encoding=True)
    fmt = PromptFormat.of(tok, task())  # auto without a template: raw
    assert not fmt.chat
    plain = fmt.encode(Prompt("p0", "2+3=", "5"))
    formatted = fmt.encode(Prompt("p1", "<bos>2+3=", "5"))  # formatted upstream
    assert plain == formatted and plain.count(tok.bos_token_id) == 1


def test_system_prompt_template_and_conversations():
    tok = char_tokenizer()
    fmt = PromptFormat.of(tok, task(system_prompt="Be brief.", prompt_template="Q: {prompt} {x}"))
    assert fmt.render(Prompt("p", "2+3=", "5")) == "<bos>[system]Be brief.<eos>[user]Q: 2+3= {x}<eos>[assistant]"
    turns = (("system", "Add."), ("user", "1+1="), ("assistant", "2"), ("user", "2+2="))
    conv = Prompt("c", "2+2=", "4", messages=turns)
    # the row's own system turn is kept; the template wraps the last user turn only
    assert fmt.render(conv) == "<bos>[system]Add.<eos>[user]1+1=<eos>[assistant]2<eos>[user]Q: 2+2= {x}<eos>[assistant]"


def test_formats_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="has no chat template"):
        PromptFormat.of(char_tokenizer(template=None), task(prompt_format="chat"), "model.path='/ckpt'")
    with pytest.raises(ConfigError, match="system turn needs a chat template"):
        PromptFormat.of(char_tokenizer(template=None), task(system_prompt="Be brief."))
    raw = PromptFormat.of(char_tokenizer(), task(prompt_format="raw"))
    with pytest.raises(ConfigError, match="is a conversation"):
        raw.render(Prompt("c", "1+1=", "2", messages=(("user", "1+1="),)))
    with pytest.raises(ConfigError, match="has no \\{prompt\\}"):
        load_config(None, ["task.prompt_template='Answer is'"])
    with pytest.raises(ConfigError, match="system turn needs the chat format"):
        load_config(None, ["task.system_prompt=hi", "task.prompt_format=raw"])
    with pytest.raises(ConfigError, match="rollout.stop"):
        load_config(None, ["rollout.stop=['']"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny Llama with the chat tokenizer; its generation_config.json also ends a response at ``+``
    (a second end token, as instruct checkpoints declare ``<|im_end|>`` beside EOS)."""
    directory = tmp_path_factory.mktemp("chat-ckpt")
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), tok)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("+")]
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def test_a_response_ends_at_every_end_token_the_checkpoint_declares(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    plus = tok.convert_tokens_to_ids("+")
    engine = HFEngine(tiny_checkpoint, tok.pad_token_id, tok.eos_token_id, tokenizer=tok)
    assert engine.end_ids == [tok.eos_token_id, plus]
    torch.manual_seed(0)
    outs = engine.generate([tok("12")["input_ids"]] * 64, max_new_tokens=30, temperature=1.0)
    stopped_at_plus = 0
    for o in outs:
        ends = [i for i, t in enumerate(o.token_ids) if t in engine.end_ids]
        if o.finish_reason == "stop":
            assert ends == [len(o.token_ids) - 1]  # nothing after the first end token
            assert o.stop_reason == tok.convert_ids_to_tokens(int(o.token_ids[-1]))
            stopped_at_plus += o.token_ids[-1] == plus
        else:
            assert ends == [] and len(o.token_ids) == 30 and o.stop_reason == ""
    # ~70 tokens in the vocabulary and up to 30 draws each: '+' ends many of the 64 (the EOS alone would end few)
    assert stopped_at_plus > 0


def test_a_stop_string_ends_the_response_at_the_token_that_completes_it(tiny_checkpoint):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    engine = HFEngine(tiny_checkpoint, tok.pad_token_id, tok.eos_token_id, stop=("45=",), tokenizer=tok)
    row = np.array(tok("1245=9")["input_ids"] + [tok.pad_token_id] * 3)
    assert engine._stop(row) == (5, "45=")  # "1245=": the stop string's tokens stay in the response
    # generate() pads a finished row; when the pad is an end token (SmolLM2's <|im_end|>), the first stop wins
    engine.pad_token_id = tok.eos_token_id
    assert engine._stop(np.array(tok("1245=")["input_ids"] + [tok.eos_token_id] * 2)) == (5, "45=")
    assert engine._stop(np.array(tok("12")["input_ids"] + [tok.eos_token_id] * 2)) == (3, "<eos>")
    assert engine._stop(np.array(tok("124")["input_ids"])) == (3, "")  # ran to the length limit
    with pytest.raises(ValueError, match="need the tokenizer"):
        HFEngine(tiny_checkpoint, tok.pad_token_id, tok.eos_token_id, stop=("x",))


def test_the_rollout_worker_generates_from_the_rendered_prompt_and_records_it(tiny_checkpoint):
    cfg = load_config(None, ["rollout.group_size=2", "rollout.max_new_tokens=5", "rollout.stop=['7']",
                             "task.system_prompt=Add."])
    worker = RolloutWorker(0, tiny_checkpoint, cfg.rollout, cfg.task)
    batch, n = worker.generate(0, [Prompt("p0", "2+3=", "5"), Prompt("c", "4+4=", "8", messages=(("user", "4+4="),))])
    tok = worker.tokenizer
    assert n == 4
    for g in batch.groups:
        assert g.prompt_text == f"<bos>[system]Add.<eos>[user]{g.prompt.text}<eos>[assistant]"
        for s in g.samples:
            assert tok.decode(s.prompt_ids) == g.prompt_text
            text = tok.decode(s.response_ids)
            assert s.finish_reason == ("stop" if s.stop_reason else "length")
            if s.stop_reason == "7":
                assert text.endswith("7") and text.count("7") == 1
