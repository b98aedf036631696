"""Tests for rlsys.data (tasks, tokenizer, tiny model, warm-up) and rlsys.prepare, on real files in tmp_path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlsys.config import ConfigError, ModelConfig, WarmupConfig, load_config
from rlsys.data.chat import PromptFormat
from rlsys.data.model import build_tiny_llama
from rlsys.data.tasks import PromptStream, make_arithmetic_rows, read_prompts, write_parquet
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


# ---- make_arithmetic_rows ----


def test_addition_rows_count_unique_and_correct() -> None:
    rows = make_arithmetic_rows(num_digits=2, num_rows=300, seed=7)
    assert len(rows) == 300
    assert len({r["prompt"] for r in rows}) == 300
    assert len({r["id"] for r in rows}) == 300
    for r in rows:
        assert r["prompt"].endswith("=")
        a, b = r["prompt"][:-1].split("+")
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        assert r["answer"] == str(int(a) + int(b))


def test_addition_rows_are_deterministic_per_seed() -> None:
    assert make_arithmetic_rows(2, 50, seed=3) == make_arithmetic_rows(2, 50, seed=3)
    assert make_arithmetic_rows(2, 50, seed=3) != make_arithmetic_rows(2, 50, seed=4)


def test_addition_rows_exclude_keeps_splits_disjoint() -> None:
    held_out = make_arithmetic_rows(1, 30, seed=0)
    exclude = {r["prompt"] for r in held_out}
    # 1-digit problems: 100 exist, 30 excluded, so the remaining 70 must all be drawn and none may be excluded.
    train = make_arithmetic_rows(1, 70, seed=1, exclude=exclude)
    assert not exclude & {r["prompt"] for r in train}
    assert len({r["prompt"] for r in train} | exclude) == 100


def test_addition_rows_too_many_raises() -> None:
    with pytest.raises(ValueError, match="cannot draw 101 distinct"):
        make_arithmetic_rows(1, 101, seed=0)
    with pytest.raises(ValueError, match="only 90 exist"):
        make_arithmetic_rows(1, 91, seed=0, exclude={f"{i}+0=" for i in range(10)})


# ---- Parquet round trip ----


def test_write_and_read_parquet_round_trip(tmp_path: Path) -> None:
    rows = make_arithmetic_rows(2, 40, seed=5)
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
    prompts = [Prompt(r["id"], r["prompt"], r["answer"]) for r in make_arithmetic_rows(2, 200, seed=0)]
    losses, checks = supervised_warmup(model, PromptFormat.raw(tok), prompts,
                                       WarmupConfig(steps=40, batch_size=32, lr=3e-3), seed=0)
    assert len(losses) == 40 and checks == []
    assert all(loss == loss for loss in losses)  # no NaN
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert not model.training  # left in eval mode


# ---- prepare ----


def _small(tmp_path: Path, *extra: str):
    """A small config; the synthetic task's size and the tiny model's shape only where they act (else refused)."""
    synthetic = not {"task.name=parquet", "task.name=gsm8k"} & set(extra)
    tiny = not any(e.startswith("model.path=") for e in extra)
    held_out = not any(e.startswith("task.eval_file=") for e in extra)
    return load_config(None, [
        f"output.cache_dir={tmp_path / 'cache'}",
        "warmup.steps=20",
        "warmup.batch_size=16",
        *(["task.num_train=200"] if synthetic else []),
        *(["task.num_eval=20"] if held_out else []),
        *(["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2"]
          if tiny else []),
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


# ---- load-time checks of every dataset (rlsys.data.checks) ----


def _write(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


GOOD = {"id": ["r0", "r1", "r2", "r3"], "prompt": ["1+1=", "2+2=", "3+3=", "4+4="], "answer": ["2", "4", "6", "8"]}


@pytest.mark.parametrize(("column", "value", "reason", "detail"), [
    ("prompt", None, "null prompt", "prompt is null"),
    ("answer", None, "null answer", "answer is null"),
    ("id", None, "null id", "id is null"),
    ("id", " ", "empty id", "id is ' ' (empty)"),
    ("prompt", "", "empty prompt", "prompt is '' (empty or whitespace only)"),
    ("prompt", " \n\t", "empty prompt", "prompt is ' \\n\\t' (empty or whitespace only)"),
    ("answer", "", "empty answer", "answer is '' (empty or whitespace only)"),
    ("answer", "  ", "empty answer", "answer is '  ' (empty or whitespace only)"),
])
def test_bad_cell_fails_naming_file_row_and_reason_or_is_dropped(tmp_path: Path, column, value, reason, detail
                                                                 ) -> None:
    from rlsys.data.tasks import DatasetError, read_rows

    cols = {k: list(v) for k, v in GOOD.items()}
    cols[column][2] = value
    path = _write(tmp_path / "train.parquet", **cols)
    with pytest.raises(DatasetError) as info:
        read_prompts(path)
    msg = str(info.value)
    shown_id = "" if column == "id" else " (id 'r2')"
    assert f"{path} row 2{shown_id}: {detail}" in msg, msg
    assert "task.bad_rows=drop" in msg and f"by reason: {reason} 1" in msg
    assert "row 0" not in msg and "row 1" not in msg and "row 3" not in msg  # only the bad row is named

    kept = read_prompts(path, bad_rows="drop")
    assert [p.prompt_id for p in kept] == ["r0", "r1", "r3"]
    assert "None" not in {p.text for p in kept} | {p.answer for p in kept}
    rows = read_rows(path)
    assert [(b.file, b.row, b.reason) for b in rows.bad] == [(str(path), 2, reason)]
    assert rows.rows == [0, 1, 3]


def test_null_cells_never_become_the_text_none(tmp_path: Path) -> None:
    """The old read_prompts turned a null cell into "None"; without an id column the default ids are kept."""
    from rlsys.data.tasks import read_rows

    path = _write(tmp_path / "nulls.parquet", prompt=["1+1=", None, "None"], answer=[None, "2", "3"])
    rows = read_rows(path)
    assert [(p.prompt_id, p.text, p.answer) for p in rows.prompts] == [("nulls-2", "None", "3")]  # literal "None"
    assert [str(b) for b in rows.bad] == [f"{path} row 0: answer is null", f"{path} row 1: prompt is null"]


def test_numeric_answers_and_ids_are_accepted_as_text(tmp_path: Path) -> None:
    """Integer answer (and id) columns are common: numbers become their text; integral floats (pandas makes an int
    column with a gap float) lose the '.0'."""
    ints = _write(tmp_path / "ints.parquet", id=[10, 11], prompt=["1+1=", "2+2="], answer=[2, 4])
    assert [(p.prompt_id, p.answer) for p in read_prompts(ints)] == [("10", "2"), ("11", "4")]
    floats = _write(tmp_path / "floats.parquet", prompt=["1+1=", "1/2=", "3+3="], answer=[2.0, 0.5, float("nan")])
    with pytest.raises(ValueError, match=r"floats.parquet row 2: answer is null"):  # NaN is a missing value
        read_prompts(floats)
    assert [p.answer for p in read_prompts(floats, bad_rows="drop")] == ["2", "0.5"]


def test_non_string_cells_are_bad_rows(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    path = _write(tmp_path / "types.parquet", prompt=[1, 2], answer=["1", "2"])
    with pytest.raises(DatasetError) as info:
        read_prompts(path)
    assert f"{path} row 0: prompt is int 1, not a string" in str(info.value)
    assert f"{path} row 1: prompt is int 2, not a string" in str(info.value)
    for answer, shown in (([True, False], "bool True"), ([float("inf"), 1.0], "float inf")):
        path = _write(tmp_path / "answers.parquet", prompt=["1+1=", "2+2="], answer=answer)
        with pytest.raises(DatasetError, match=f"row 0: answer is {shown}, not a string or a finite number"):
            read_prompts(path)
    path = _write(tmp_path / "ids.parquet", id=[0.5, 1.5], prompt=["1+1=", "2+2="], answer=["2", "4"])
    with pytest.raises(DatasetError, match="row 0: id is float 0.5, not a string or an integer"):
        read_prompts(path)


def test_duplicate_ids_are_an_error_naming_them_even_with_drop(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    path = _write(tmp_path / "dup.parquet", id=["x", "y", "x", "z", "y"], prompt=["1+1="] * 5, answer=["2"] * 5)
    for mode in ("fail", "drop"):
        with pytest.raises(DatasetError, match=r"'x' \(rows 0, 2\), 'y' \(rows 1, 4\)"):
            read_prompts(path, bad_rows=mode)


def test_empty_unreadable_and_all_bad_files_have_no_usable_rows(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    empty = _write(tmp_path / "empty.parquet", prompt=pa.array([], pa.string()), answer=pa.array([], pa.string()))
    for mode in ("fail", "drop"):
        with pytest.raises(DatasetError, match=f"{empty} has no usable rows: it has no rows at all"):
            read_prompts(empty, bad_rows=mode)
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    with pytest.raises(DatasetError, match="zero.parquet: not a readable Parquet file"):
        read_prompts(zero)
    all_bad = _write(tmp_path / "bad.parquet", prompt=[None, "", "2+2="], answer=["1", "2", None])
    with pytest.raises(DatasetError, match=r"3 bad row\(s\)"):
        read_prompts(all_bad)
    with pytest.raises(DatasetError, match=r"bad.parquet has no usable rows: all 3 were dropped \(null prompt 1, "
                       r"empty prompt 1, null answer 1\)"):
        read_prompts(all_bad, bad_rows="drop")


def test_many_bad_rows_are_listed_in_one_error_up_to_twenty(tmp_path: Path) -> None:
    from rlsys.data.checks import MAX_LISTED, DatasetError

    n = MAX_LISTED + 5
    path = _write(tmp_path / "many.parquet", prompt=[None] * n + ["1+1="], answer=["1"] * n + ["2"])
    with pytest.raises(DatasetError) as info:
        read_prompts(path)
    msg = str(info.value)
    assert msg.startswith(f"{n} bad row(s)")
    assert f"row {MAX_LISTED - 1}: prompt is null" in msg and f"row {MAX_LISTED}:" not in msg
    assert "... and 5 more" in msg and f"by reason: null prompt {n}" in msg


def test_token_checks_too_long_and_unknown_characters() -> None:
    """Prompts are counted as the rollout worker encodes them; unknown characters are named, and the unknown
    token's own text written literally is not a loss."""
    from transformers import LlamaConfig

    from rlsys.data.checks import check_tokens

    tok = build_char_tokenizer()
    context = LlamaConfig(max_position_embeddings=16).max_position_embeddings
    limit = context - 6
    prompts = [Prompt("ok", "1" * limit, "2"), Prompt("long", "1" * (limit + 1), "2"), Prompt("unk", "1+x=", "2"),
               Prompt("literal", "1+<unk>=", "2"), Prompt("ans", "1+1=", "zwei"), Prompt("both", "ab" * 10, "2")]
    assert len(tok(prompts[1].text)["input_ids"]) == limit + 1
    bad = check_tokens("eval.parquet", [0, 1, 2, 3, 4, 5], prompts, PromptFormat.raw(tok), limit, "16 minus 6")
    assert [(b.row, b.reason) for b in bad] == [(1, "prompt too long"), (2, "unknown characters in prompt"),
                                                (4, "unknown characters in answer"), (5, "prompt too long")]
    assert str(bad[0]) == "eval.parquet row 1 (id 'long'): prompt is 11 tokens; at most 10 fit (16 minus 6)"
    assert str(bad[1]) == ("eval.parquet row 2 (id 'unk'): prompt has characters the tokenizer cannot represent "
                           "(they would become <unk>): 'x'")
    assert bad[2].detail.endswith("'z', 'w', 'e', 'i'")
    assert check_tokens("f", [0], prompts[:1], PromptFormat.raw(tok), None) == []  # no context known: length unchecked


def _parquet_cfg(tmp_path: Path, train: Path, *extra: str):
    return _small(tmp_path, "task.name=parquet", f"task.train_file={train}", "warmup.steps=5", *extra)


def test_prepare_fails_before_the_warm_up_listing_cell_and_token_problems(tmp_path: Path) -> None:
    """One error lists every bad row of train and eval (a null cell, an over-long prompt, an unknown character in
    an eval prompt of the char tokenizer built from the train alphabet); nothing is cached."""
    from rlsys.data.tasks import DatasetError

    train = write_parquet([{"id": f"t{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(30)],
                          tmp_path / "train.parquet")
    cols = pq.read_table(train).to_pydict()
    cols["answer"][4] = None
    cols["prompt"][7] = "1+" * 10 + "="  # 21 tokens: over 32 - 12
    train = _write(train, **cols)
    evals = _write(tmp_path / "eval.parquet", id=["e0", "e1", "e2"], prompt=["1+1=", "1+x=", "2+2="],
                   answer=["2", "2", "4"])
    cfg = _parquet_cfg(tmp_path, train, f"task.eval_file={evals}", "model.max_position_embeddings=32",
                       "rollout.max_new_tokens=12")
    with pytest.raises(DatasetError) as info:
        prepare(cfg)
    msg = str(info.value)
    assert f"{train} row 4 (id 't4'): answer is null" in msg
    assert (f"{train} row 7 (id 't7'): prompt is 21 tokens; at most 20 fit (model.max_position_embeddings=32 minus "
            "rollout.max_new_tokens=12)") in msg
    assert f"{evals} row 1 (id 'e1'): prompt has characters the tokenizer cannot represent" in msg
    assert msg.startswith("3 bad row(s)")
    assert not (tmp_path / "cache" / "models").exists()  # failed before the warm-up


def test_prepare_drops_and_counts_bad_rows_and_caches_by_the_kept_rows(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    rows = [{"id": f"t{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(30)]
    rows[3]["prompt"] = "12345678+12345="  # 15 tokens
    train = write_parquet(rows, tmp_path / "train.parquet")
    cols = pq.read_table(train).to_pydict()
    cols["prompt"][5] = " "
    train = _write(train, **cols)
    evals = _write(tmp_path / "eval.parquet", prompt=["1+1=", "1+x=", "2+2="], answer=["2", "2", "4"])
    common = (f"task.eval_file={evals}", "model.max_position_embeddings=24", "task.bad_rows=drop")
    prep = prepare(_parquet_cfg(tmp_path, train, *common, "rollout.max_new_tokens=6"))  # 18 fit: row 3 stays
    assert prep.warmup_cached is False
    assert prep.dropped_rows == {"empty prompt": 1, "unknown characters in prompt": 1}
    assert [(b.file, b.row, b.reason) for b in prep.dropped] == [
        (str(train), 5, "empty prompt"), (str(evals), 1, "unknown characters in prompt")]
    assert [p.prompt_id for p in prep.train_prompts] == [f"t{i}" for i in range(30) if i != 5]
    assert [p.text for p in prep.eval_prompts] == ["1+1=", "2+2="]

    again = prepare(_parquet_cfg(tmp_path, train, *common, "rollout.max_new_tokens=6"))
    assert again.warmup_cached is True and again.model_dir == prep.model_dir
    assert again.dropped_rows == prep.dropped_rows and again.dropped == prep.dropped  # reported on a cached run too

    # 10 new tokens leave 14: row 3 is dropped too, so the warm-up trains on other rows — another checkpoint.
    longer = prepare(_parquet_cfg(tmp_path, train, *common, "rollout.max_new_tokens=10"))
    assert longer.dropped_rows == {"empty prompt": 1, "prompt too long": 1, "unknown characters in prompt": 1}
    assert "t3" not in {p.prompt_id for p in longer.train_prompts}
    assert longer.warmup_cached is False and longer.model_dir != prep.model_dir

    with pytest.raises(ConfigError, match="rollout.max_new_tokens=24 leaves no room for a prompt"):
        prepare(_parquet_cfg(tmp_path, train, *common, "rollout.max_new_tokens=24"))
    only_bad = _write(tmp_path / "only_bad.parquet", prompt=["1+x=", "x"], answer=["1", "2"])
    with pytest.raises(DatasetError, match=f"task.eval_file {only_bad} has no usable rows: all 2 were dropped "
                       r"\(unknown characters in prompt 2\)"):
        prepare(_small(tmp_path, "task.name=parquet", f"task.train_file={train}", f"task.eval_file={only_bad}",
                       "task.bad_rows=drop", "warmup.steps=0"))


def test_prepare_held_out_split_names_the_users_rows_and_writes_no_bad_row(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(40)]
    user = write_parquet(rows, tmp_path / "mine.parquet")
    cols = pq.read_table(user).to_pydict()
    cols["prompt"][11], cols["answer"][17] = None, ""
    user = _write(user, **cols)
    base = ("task.num_eval=10", "warmup.steps=0")
    with pytest.raises(ValueError, match=f"{user} row 11 \\(id 'q11'\\): prompt is null"):
        prepare(_parquet_cfg(tmp_path, user, *base))
    prep = prepare(_parquet_cfg(tmp_path, user, *base, "task.bad_rows=drop"))
    assert prep.dropped_rows == {"null prompt": 1, "empty answer": 1}
    assert {(b.file, b.row) for b in prep.dropped} == {(str(user), 11), (str(user), 17)}
    assert len(prep.eval_prompts) == 10 and len(prep.train_prompts) == 28
    written = {p.prompt_id for f in (prep.train_file, prep.eval_file) for p in read_prompts(f)}
    assert written == {f"q{i}" for i in range(40)} - {"q11", "q17"}


def test_prepare_with_a_checkpoints_tokenizer_and_context(tmp_path: Path) -> None:
    """model.path: the context is the checkpoint's max_position_embeddings and unknown characters are those of its
    tokenizer, so a train prompt can hold them too."""
    from rlsys.data.tasks import DatasetError

    tok = build_char_tokenizer()
    ckpt = tmp_path / "ckpt"
    build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                 max_position_embeddings=12), tok).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    train = write_parquet([{"id": f"t{i}", "prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(20)]
                          + [{"id": "long", "prompt": "1+2+3+4=", "answer": "10"},
                             {"id": "unk", "prompt": "one+1=", "answer": "2"}], tmp_path / "train.parquet")
    with pytest.raises(DatasetError) as info:
        prepare(_parquet_cfg(tmp_path, train, f"model.path={ckpt}", "task.num_eval=5", "rollout.max_new_tokens=5"))
    msg = str(info.value)
    assert f"(id 'long'): prompt is 8 tokens; at most 7 fit (max_position_embeddings of {ckpt}=12 minus " in msg
    assert "(id 'unk'): prompt has characters the tokenizer cannot represent (they would become <unk>): 'o', 'n', " \
           "'e'" in msg


def test_empty_eval_split_is_an_error(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    train = write_parquet([{"id": f"t{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)],
                          tmp_path / "train.parquet")
    empty = write_parquet([], tmp_path / "empty.parquet")
    with pytest.raises(DatasetError, match=rf"task.eval_file {empty} has no usable rows: it has no rows at all"):
        prepare(_small(tmp_path, "task.name=parquet", f"task.train_file={train}", f"task.eval_file={empty}",
                       "warmup.steps=0"))


def test_warmup_on_no_prompts_says_so_instead_of_max_error() -> None:
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="training set is empty"):
        supervised_warmup(build_tiny_llama(SMALL_MODEL, tok), PromptFormat.raw(tok), [], WarmupConfig(steps=2), seed=0)


def test_warmup_to_a_target_accuracy_stops_at_the_first_check_that_reaches_it() -> None:
    """A target lands RL's start at a held-out accuracy rather than at a step count (whose accuracy varies with the
    CPU and the seed); an unreachable target runs to the step cap."""
    from rlsys.data.warmup import greedy_exact_accuracy

    tok = build_char_tokenizer()
    rows = make_arithmetic_rows(1, 100, seed=0)  # 1-digit sums: learnable in a few hundred steps
    prompts = [Prompt(r["id"], r["prompt"], r["answer"]) for r in rows]
    train, held_out = prompts[:70], prompts[70:]
    cfg = WarmupConfig(steps=600, batch_size=32, lr=3e-3, target_accuracy=0.2, check_every=20)
    model = build_tiny_llama(SMALL_MODEL, tok)
    losses, checks = supervised_warmup(model, PromptFormat.raw(tok), train, cfg, seed=0, eval_prompts=held_out,
                                       max_new_tokens=3)
    assert checks, "the target was never checked"
    steps, acc = checks[-1]
    assert acc >= 0.2 and all(a < 0.2 for _, a in checks[:-1]) and len(losses) == steps < 600
    # the model is left as checked
    assert greedy_exact_accuracy(model, PromptFormat.raw(tok), held_out, 3) == pytest.approx(acc)
    capped = WarmupConfig(steps=40, batch_size=32, lr=3e-3, target_accuracy=0.99, check_every=20)
    losses, checks = supervised_warmup(build_tiny_llama(SMALL_MODEL, tok), PromptFormat.raw(tok), train, capped, seed=0,
                                       eval_prompts=held_out, max_new_tokens=3)
    assert len(losses) == 40 and [s for s, _ in checks] == [20]
    with pytest.raises(ValueError, match="needs the held-out prompts"):
        supervised_warmup(build_tiny_llama(SMALL_MODEL, tok), PromptFormat.raw(tok), train, capped, seed=0)


# ---- JSONL files and conversation rows ----


def _jsonl(path: Path, *lines: object) -> Path:
    """A JSONL file: each dict is written as JSON, each str as it is (a raw line), bytes as raw bytes."""
    import json

    raw = b"\n".join(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
                     for line in lines)
    path.write_bytes(raw + b"\n")
    return path


def test_jsonl_rows_read_like_parquet_rows(tmp_path: Path) -> None:
    """Ids from the id key or <file stem>-<row>, the row being the 0-based line (a blank line holds none); numeric
    answers become text; a key absent from a line is a null cell; a separator inside a string (U+2028) is not a
    line break."""
    from rlsys.data.tasks import read_rows

    path = _jsonl(tmp_path / "mine.jsonl", {"prompt": "1+1=", "answer": 2}, "", {"prompt": "2+2=\u2028", "answer": "4"},
                  {"prompt": "3+3="})
    rows = read_rows(path)
    assert [(p.prompt_id, p.text, p.answer, p.messages) for p in rows.prompts] == [
        ("mine-0", "1+1=", "2", ()), ("mine-2", "2+2=\u2028", "4", ())]
    assert rows.rows == [0, 2] and not rows.has_ids
    assert [str(b) for b in rows.bad] == [f"{path} row 3: answer is null"]
    ids = _jsonl(tmp_path / "ids.jsonl", {"id": "a", "prompt": "1+1=", "answer": "2"}, {"id": 7, "prompt": "2+2=",
                                                                                        "answer": "4"})
    assert [p.prompt_id for p in read_prompts(ids)] == ["a", "7"]
    dup = _jsonl(tmp_path / "dup.jsonl", *[{"id": "x", "prompt": "1+1=", "answer": "2"}] * 2)
    with pytest.raises(ValueError, match=r"'x' \(rows 0, 1\)"):
        read_prompts(dup, bad_rows="drop")


def test_jsonl_lines_that_are_not_objects_are_bad_rows_naming_their_line(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError, read_rows

    good = [{"id": f"r{i}", "prompt": f"{i}+0=", "answer": str(i)} for i in range(20)]
    lines: list[object] = list(good)
    lines[3] = '{"id": "r3", "prompt": "3+0=", "answer": "3"'  # not closed
    lines[9] = '["r9", "9+0=", "9"]'
    lines[12] = "7"
    lines[17] = b'{"id": "r17", "prompt": "\xff", "answer": "17"}'
    path = _jsonl(tmp_path / "lines.jsonl", *lines)
    with pytest.raises(DatasetError) as info:
        read_prompts(path)
    msg = str(info.value)
    assert f"{path} row 3: not a JSON object (invalid JSON: Expecting ',' delimiter at column 45)" in msg, msg
    assert f"{path} row 9: not a JSON object (an array: a line of a JSONL prompt file is one row, an object)" in msg
    assert f"{path} row 12: not a JSON object (a number:" in msg
    assert f"{path} row 17: not a JSON object (not UTF-8 text: b'\\xff' at byte 26)" in msg
    assert msg.startswith("4 bad row(s)") and "by reason: not a JSON object 4" in msg
    kept = read_prompts(path, bad_rows="drop")
    assert [p.prompt_id for p in kept] == [f"r{i}" for i in range(20) if i not in (3, 9, 12, 17)]
    assert read_rows(path).rows == [i for i in range(20) if i not in (3, 9, 12, 17)]
    # A leading byte-order mark is not a bad line; a file of no object at all has nothing usable.
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "1+1=", "answer": "2"}\n')
    assert [p.text for p in read_prompts(bom)] == ["1+1="]
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text('{\n  "prompt": "1+1=",\n  "answer": "2"\n}\n')  # one object over four lines
    with pytest.raises(DatasetError, match=r"pretty.jsonl has no usable rows: all 4 were dropped \(not a JSON object "
                       r"4\)"):
        read_prompts(pretty, bad_rows="drop")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty.jsonl has no usable rows: it has no rows at all"):
        read_prompts(empty)


def test_files_are_read_by_suffix_and_need_a_prompt_or_messages_column(tmp_path: Path) -> None:
    from rlsys.data.tasks import DatasetError

    csv = tmp_path / "mine.csv"
    csv.write_text("prompt,answer\n1+1=,2\n")
    with pytest.raises(DatasetError, match=r"mine.csv: a prompt file is Parquet or JSON Lines, named by its suffix "
                       r"\(.parquet, .jsonl\), not .csv"):
        read_prompts(csv)
    for path in (_write(tmp_path / "none.parquet", question=["1+1="], answer=["2"]),
                 _jsonl(tmp_path / "none.jsonl", {"question": "1+1=", "answer": "2"})):
        with pytest.raises(DatasetError, match=r"missing column\(s\) \['prompt or messages'\]; a prompt file needs a "
                           r"string column 'prompt' or a column 'messages'"):
            read_prompts(path)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2+2="}]
TURNS = (("system", "Be brief."), ("user", "1+1="), ("assistant", "2"), ("user", "and 2+2="))


def test_conversation_rows_round_trip_from_parquet_and_jsonl(tmp_path: Path) -> None:
    """A row holds a prompt or a conversation; a conversation's text is its last user turn (what rewards see)."""
    from rlsys.data.tasks import MESSAGES_TYPE

    table = pa.table({"id": ["c", "p"], "prompt": pa.array([None, "3+3="], pa.string()),
                      "messages": pa.array([CHAT, None], MESSAGES_TYPE), "answer": ["4", "6"]})
    pq.write_table(table, tmp_path / "chat.parquet")
    jsonl = _jsonl(tmp_path / "chat.jsonl", {"id": "c", "messages": [{**CHAT[0], "name": "ignored"}, *CHAT[1:]],
                                             "answer": "4"}, {"id": "p", "prompt": "3+3=", "answer": 6})
    for path in (tmp_path / "chat.parquet", jsonl):
        assert read_prompts(path) == [Prompt("c", "and 2+2=", "4", messages=TURNS), Prompt("p", "3+3=", "6")]
    only = _write(tmp_path / "only.parquet", messages=pa.array([CHAT[1:2]], MESSAGES_TYPE), answer=["2"])
    assert read_prompts(only) == [Prompt("only-0", "1+1=", "2", messages=(("user", "1+1="),))]
    # write_parquet keeps the turns, and adds no messages column where no row has any.
    written = write_parquet([{"id": "c", "prompt": None, "answer": "4", "messages": CHAT},
                             {"id": "p", "prompt": "3+3=", "answer": "6", "messages": None}], tmp_path / "w.parquet")
    assert pq.read_schema(written).field("messages").type == MESSAGES_TYPE
    assert read_prompts(written) == read_prompts(jsonl)
    plain = write_parquet([{"id": "p", "prompt": "3+3=", "answer": "6"}], tmp_path / "plain.parquet")
    assert pq.read_schema(plain).names == ["id", "prompt", "answer"]


@pytest.mark.parametrize(("messages", "reason", "detail"), [
    (None, "null messages", "messages is null"),
    ("1+1=", "bad messages", "messages is str '1+1=', not a list of {role, content} turns"),
    ([], "bad messages", "messages is an empty list: a conversation needs a user turn"),
    (["1+1="], "bad messages", "messages[0] is str '1+1=', not a {role, content} mapping"),
    ([{"content": "1+1="}], "bad messages", "messages[0] has no role"),
    ([{"role": "User", "content": "1+1="}], "bad messages",
     "messages[0] has role 'User'; a role is one of system, user, assistant, tool"),
    ([{"role": "user"}], "bad messages", "messages[0] (user) has no content"),
    ([{"role": "user", "content": ["1+1="]}], "bad messages", "messages[0] (user) has content list ['1+1='], not a "
     "string"),
    ([CHAT[0], {"role": "user", "content": " "}], "bad messages",
     "messages[1] (user) has content ' ' (empty or whitespace only)"),
    ([CHAT[0], CHAT[2]], "bad messages", "messages has no user turn (roles system, assistant): a prompt must ask the "
     "model something"),
    (CHAT[:3], "bad messages", "the last turn, messages[2], is a assistant turn, not a user turn: a prompt must end "
     "with what the model is asked"),
])
def test_bad_conversation_cells_are_bad_rows(tmp_path: Path, messages, reason, detail) -> None:
    from rlsys.data.checks import REASONS
    from rlsys.data.tasks import DatasetError

    assert reason in REASONS
    rows = [{"id": f"r{i}", "messages": CHAT, "answer": "4"} for i in range(3)]
    rows[1]["messages"] = messages
    path = _jsonl(tmp_path / "chat.jsonl", *rows)
    with pytest.raises(DatasetError) as info:
        read_prompts(path)
    assert f"{path} row 1 (id 'r1'): {detail}\nby reason: {reason} 1" in str(info.value), str(info.value)
    assert [p.prompt_id for p in read_prompts(path, bad_rows="drop")] == ["r0", "r2"]


def test_a_row_is_a_prompt_or_a_conversation_not_both_nor_neither(tmp_path: Path) -> None:
    from rlsys.data.tasks import MESSAGES_TYPE, read_rows

    path = _write(tmp_path / "mixed.parquet", id=["both", "neither", "ok"], prompt=["1+1=", None, None],
                  messages=pa.array([CHAT, None, CHAT], MESSAGES_TYPE), answer=["2", "2", "4"])
    rows = read_rows(path)
    assert [p.prompt_id for p in rows.prompts] == ["ok"]
    assert [(b.reason, str(b)) for b in rows.bad] == [
        ("prompt and messages", f"{path} row 0 (id 'both'): both prompt and messages are set: a row is either a prompt "
         "or a conversation; leave one of them null"),
        ("null prompt", f"{path} row 1 (id 'neither'): prompt and messages are both null (a row needs one of them)")]
    only = _write(tmp_path / "only.parquet", messages=pa.array([None, CHAT[1:2]], MESSAGES_TYPE), answer=["2", "2"])
    assert [(b.row, b.reason, b.detail) for b in read_rows(only).bad] == [(0, "null messages", "messages is null")]


def _chat_checkpoint(directory: Path) -> Path:
    """A tiny Llama whose character tokenizer has a chat template: conversations need one (rlsys.data.chat)."""
    import string

    tok = build_char_tokenizer(DEFAULT_ALPHABET + string.ascii_letters + "[]. ")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    build_tiny_llama(replace(SMALL_MODEL, max_position_embeddings=128), tok).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_the_held_out_split_keeps_conversations(tmp_path: Path) -> None:
    """The held-out train and eval files of a conversation file are conversations still, read back whole."""
    from rlsys.prepare import load_datasets

    rows = [{"id": f"c{i}", "messages": [CHAT[0], {"role": "user", "content": f"{i}+{i}="}], "answer": str(2 * i)}
            for i in range(20)] + [{"id": f"p{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(10)]
    user = _jsonl(tmp_path / "chat.jsonl", *rows)
    data = load_datasets(_small(tmp_path, "task.name=parquet", f"task.train_file={user}", "task.num_eval=8",
                                "warmup.steps=0", f"model.path={_chat_checkpoint(tmp_path / 'ckpt')}"))
    assert len(data.train_prompts) == 22 and len(data.eval_prompts) == 8
    assert read_prompts(data.eval_file) == data.eval_prompts and read_prompts(data.train_file) == data.train_prompts
    conversations = [p for p in data.train_prompts + data.eval_prompts if p.messages]
    assert len(conversations) == 20 and all(p.messages[0] == TURNS[0] and p.text == p.messages[-1][1]
                                            for p in conversations)
