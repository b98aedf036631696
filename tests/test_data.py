"""Tests for rlsys.data (tasks, tokenizer, tiny model, warm-up) and rlsys.prepare, on real files in tmp_path."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsys.config import ModelConfig, WarmupConfig, load_config
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import PromptStream, make_addition_rows, read_prompts, write_parquet
from rlsys.data.tokenizer import DEFAULT_ALPHABET, build_char_tokenizer, save_char_tokenizer
from rlsys.data.warmup import supervised_warmup
from rlsys.prepare import prepare
from rlsys.types import Prompt

SMALL_MODEL = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_position_embeddings=32)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- make_addition_rows ----


def test_addition_rows_count_unique_and_correct() -> None:
    rows = make_addition_rows(num_digits=2, num_rows=300, seed=7)
    assert len(rows) == 300
    assert len({r["prompt"] for r in rows}) == 300
    assert len({r["id"] for r in rows}) == 300
    for r in rows:
        assert r["prompt"].endswith("=")
        a, b = r["prompt"][:-1].split("+")
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert r["answer"] == str(int(a) + int(b))


def test_addition_rows_are_deterministic_per_seed() -> None:
    assert make_addition_rows(2, 50, seed=3) == make_addition_rows(2, 50, seed=3)
    assert make_addition_rows(2, 50, seed=3) != make_addition_rows(2, 50, seed=4)


def test_addition_rows_exclude_keeps_splits_disjoint() -> None:
    held_out = make_addition_rows(1, 30, seed=0)
    exclude = {r["prompt"] for r in held_out}
    # 1-digit problems: 100 exist, 30 excluded, so the remaining 70 must all be drawn and none may be excluded.
    train = make_addition_rows(1, 70, seed=1, exclude=exclude)
    assert not exclude & {r["prompt"] for r in train}
    assert len({r["prompt"] for r in train} | exclude) == 100


def test_addition_rows_too_many_raises() -> None:
    with pytest.raises(ValueError, match="cannot draw 101 distinct"):
        make_addition_rows(1, 101, seed=0)
    with pytest.raises(ValueError, match="only 90 exist"):
        make_addition_rows(1, 91, seed=0, exclude={f"{i}+0=" for i in range(10)})


# ---- Parquet round trip ----


def test_write_and_read_parquet_round_trip(tmp_path: Path) -> None:
    rows = make_addition_rows(2, 40, seed=5)
    path = write_parquet(rows, tmp_path / "sub" / "train.parquet")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the atomic-write temp file is gone
    table = pq.read_table(path)
    assert table.column_names == ["id", "prompt", "answer"]
    assert table.num_rows == 40
    prompts = read_prompts(path)
    assert [(p.prompt_id, p.text, p.answer) for p in prompts] == [(r["id"], r["prompt"], r["answer"]) for r in rows]
    assert all(p.epoch == 0 for p in prompts)


def test_read_prompts_missing_answer_column(tmp_path: Path) -> None:
    path = tmp_path / "no_answer.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["1+1=", "2+2="]}), path)
    with pytest.raises(ValueError, match="answer") as info:
        read_prompts(path)
    assert "missing column(s) ['answer']" in str(info.value)  # names exactly the missing one


def test_read_prompts_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": ["x", "x"], "prompt": ["1+1=", "2+2="], "answer": ["2", "4"]}), path)
    with pytest.raises(ValueError, match="duplicates"):
        read_prompts(path)


def test_read_prompts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_prompts(tmp_path / "missing.parquet")


def test_read_prompts_without_id_column_gets_stable_ids(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"prompt": ["1+1=", "2+2=", "3+3="], "answer": ["2", "4", "6"]}), path)
    first, second = read_prompts(path), read_prompts(path)
    ids = [p.prompt_id for p in first]
    assert ids == [p.prompt_id for p in second]
    assert len(set(ids)) == 3
    assert [p.text for p in first] == ["1+1=", "2+2=", "3+3="]
    assert [p.answer for p in first] == ["2", "4", "6"]


# ---- PromptStream ----


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(prompt_id=f"p{i}", text=f"{i}+0=", answer=str(i)) for i in range(n)]


def test_prompt_stream_epochs() -> None:
    prompts = _prompts(10)
    stream = PromptStream(prompts, seed=0)
    first = [stream.next() for _ in range(10)]
    assert sorted(p.prompt_id for p in first) == sorted(p.prompt_id for p in prompts)  # each exactly once
    assert all(p.epoch == 0 for p in first)
    second = [stream.next() for _ in range(10)]
    assert sorted(p.prompt_id for p in second) == sorted(p.prompt_id for p in prompts)
    assert all(p.epoch == 1 for p in second)
    assert stream.next().epoch == 2
    # Shuffled, and reproducibly so.
    again = PromptStream(prompts, seed=0)
    assert [again.next().prompt_id for _ in range(10)] == [p.prompt_id for p in first]
    assert [p.prompt_id for p in first] != [p.prompt_id for p in prompts] or [p.prompt_id for p in second] != [
        p.prompt_id for p in prompts
    ]


def test_prompt_stream_requeue_comes_first_with_original_epoch() -> None:
    stream = PromptStream(_prompts(4), seed=1)
    epoch0 = [stream.next() for _ in range(4)]
    fifth = stream.next()
    assert fifth.epoch == 1
    lost = epoch0[:2]
    stream.requeue(lost)
    assert [stream.next() for _ in range(2)] == lost  # same order, epoch 0 kept
    rest = [stream.next() for _ in range(3)]
    assert all(p.epoch == 1 for p in rest)
    assert sorted(p.prompt_id for p in [fifth, *rest]) == ["p0", "p1", "p2", "p3"]  # epoch 1 still complete


def test_prompt_stream_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        PromptStream([], seed=0)


# ---- tokenizer and model ----


def test_char_tokenizer_round_trip(tmp_path: Path) -> None:
    built = build_char_tokenizer()
    save_char_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    ids = tok("12+34=")["input_ids"]
    assert ids == built("12+34=")["input_ids"]
    assert len(ids) == 6  # one token per character, no specials added
    assert tok.decode(ids) == "12+34="
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 4 + len(set(DEFAULT_ALPHABET))
    assert tok("x")["input_ids"] == [tok.unk_token_id]
    assert tok.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == "12+34="


def test_tiny_llama_save_and_reload_identical_logits(tmp_path: Path) -> None:
    tok = build_char_tokenizer()
    model = build_tiny_llama(SMALL_MODEL, tok).eval()
    assert model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape == (len(tok), SMALL_MODEL.hidden_size)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert a.shape == (1, 6, len(tok))
    assert torch.equal(a, b)
    # Same seed, same weights.
    again = build_tiny_llama(SMALL_MODEL, tok).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, a)


def test_supervised_warmup_lowers_loss() -> None:
    tok = build_char_tokenizer()
    model = build_tiny_llama(SMALL_MODEL, tok)
    prompts = [Prompt(r["id"], r["prompt"], r["answer"]) for r in make_addition_rows(2, 200, seed=0)]
    start = time.perf_counter()
    losses = supervised_warmup(model, tok, prompts, WarmupConfig(steps=40, batch_size=32, lr=3e-3), seed=0)
    assert time.perf_counter() - start < 10
    assert len(losses) == 40
    assert all(loss == loss for loss in losses)  # no NaN
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert not model.training  # left in eval mode


# ---- prepare ----


def _small(tmp_path: Path, *extra: str):
    return load_config(None, [
        f"output.cache_dir={tmp_path / 'cache'}",
        "warmup.steps=20",
        "warmup.batch_size=16",
        "task.num_train=200",
        "task.num_eval=20",
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_layers=1",
        "model.num_heads=2",
        *extra,
    ])


def test_prepare_synthetic_then_cached(tmp_path: Path) -> None:
    cfg = _small(tmp_path)
    first = prepare(cfg)
    assert first.warmup_cached is False
    for path in (first.train_file, first.eval_file):
        assert Path(path).is_file()
        assert Path(path).is_relative_to(tmp_path / "cache")
    assert (Path(first.model_dir) / "config.json").is_file()
    assert len(first.train_prompts) == 200 and len(first.eval_prompts) == 20
    assert not {p.text for p in first.train_prompts} & {p.text for p in first.eval_prompts}
    # The checkpoint carries its tokenizer and loads with the Auto classes.
    tok = AutoTokenizer.from_pretrained(first.model_dir)
    model = AutoModelForCausalLM.from_pretrained(first.model_dir)
    assert model.config.vocab_size == len(tok)

    second = prepare(_small(tmp_path))
    assert second.warmup_cached is True
    assert second.model_dir == first.model_dir
    assert (second.train_file, second.eval_file) == (first.train_file, first.eval_file)
    assert [p.prompt_id for p in second.train_prompts] == [p.prompt_id for p in first.train_prompts]

    # A different warm-up setting is a different checkpoint.
    third = prepare(_small(tmp_path, "warmup.steps=0"))
    assert third.warmup_cached is False
    assert third.model_dir != first.model_dir


def test_prepare_parquet_holds_out_eval_rows(tmp_path: Path) -> None:
    user = tmp_path / "mine.parquet"
    rows = [{"id": f"q{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(60)]
    write_parquet(rows, user)
    cfg = _small(tmp_path, "task.name=parquet", f"task.train_file={user}", "task.num_eval=15", "warmup.steps=0")
    prep = prepare(cfg)
    assert Path(prep.train_file) != user and Path(prep.eval_file).is_file()
    train_ids = {p.prompt_id for p in prep.train_prompts}
    eval_ids = {p.prompt_id for p in prep.eval_prompts}
    assert len(eval_ids) == 15 and len(train_ids) == 45
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {r["id"] for r in rows}
    # The split is deterministic: a second call reads the same held-out set.
    assert {p.prompt_id for p in prepare(cfg).eval_prompts} == eval_ids


def test_prepare_parquet_too_few_rows(tmp_path: Path) -> None:
    user = tmp_path / "tiny.parquet"
    write_parquet([{"id": "a", "prompt": "1+1=", "answer": "2"}], user)
    cfg = _small(tmp_path, "task.name=parquet", f"task.train_file={user}", "task.num_eval=5")
    with pytest.raises(ValueError, match="task.num_eval"):
        prepare(cfg)
