"""task.name=gsm8k: GSM8K's question/answer rows, their reference numbers, the task's config and default reward.

The real files are read where they are (``$RLSYS_GSM8K_DIR``, default ../shared/data/gsm8k beside the repository:
train.jsonl and test.jsonl as OpenAI publishes them, MIT licence); nothing of them is copied here, and those tests
skip without them.
Every other row below is made up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GSM8K, needs_gsm8k

from rlsys.config import ConfigError, load_config
from rlsys.data.checks import REASONS
from rlsys.data.tasks import DatasetError, read_prompts, read_rows


def _gsm8k_file(path: Path, answers: list[object], questions: list[object] | None = None) -> Path:
    questions = questions or [f"Sam has {i} pens. How many pens does Sam have?" for i in range(len(answers))]
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, answers)))
    return path


def test_the_reference_is_the_number_on_the_final_line(tmp_path: Path) -> None:
    """Thousands separators and a '+' go, a sign and decimals stay; the worked steps are not kept."""
    answers = ["He has 2 + 3 = <<2+3=5>>5 pens.\n#### 5", "#### 1,080", "Lost 3.\n#### -3", "#### 2.5",
               "####  +7 ", "It costs $12,345,678.50 in all.\r\n#### 12,345,678.50\r\n"]
    prompts = read_prompts(_gsm8k_file(tmp_path / "made-up.jsonl", answers), layout="gsm8k")
    assert [p.answer for p in prompts] == ["5", "1080", "-3", "2.5", "7", "12345678.50"]
    assert prompts[0].text == "Sam has 0 pens. How many pens does Sam have?" and prompts[0].messages == ()
    assert [p.prompt_id for p in prompts] == [f"made-up-{i}" for i in range(6)]


@pytest.mark.parametrize(("answer", "reason", "detail"), [
    ("So 5 pens.", "no #### line", "answer's final line is 'So 5 pens.', not '#### <number>' (GSM8K marks the "
     "reference answer so)"),
    ("#### 5\nThat is all.", "no #### line", "answer's final line is 'That is all.', not '#### <number>'"),
    (5, "no #### line", "answer's final line is '5', not '#### <number>'"),
    ("#### 12 pens", "bad #### number", "answer's final line '#### 12 pens' has no number after '####' (digits, "
     "optionally signed, with thousands commas or decimals)"),
    ("#### $5", "bad #### number", "answer's final line '#### $5' has no number after '####'"),
    ("#### 1,00", "bad #### number", "answer's final line '#### 1,00' has no number"),
    ("####", "bad #### number", "answer's final line '####' has no number"),
    (None, "null answer", "answer is null"),
    (" ", "empty answer", "answer is ' ' (empty or whitespace only)"),
])
def test_a_solution_without_a_final_number_is_a_bad_row(tmp_path: Path, answer, reason, detail) -> None:
    assert reason in REASONS
    path = _gsm8k_file(tmp_path / "train.jsonl", ["#### 1", answer, "#### 3"])
    with pytest.raises(DatasetError) as info:
        read_prompts(path, layout="gsm8k")
    assert f"{path} row 1: {detail}" in str(info.value) and f"by reason: {reason} 1" in str(info.value)
    assert [p.answer for p in read_prompts(path, bad_rows="drop", layout="gsm8k")] == ["1", "3"]


def test_question_cells_and_columns_are_checked_by_their_gsm8k_names(tmp_path: Path) -> None:
    path = _gsm8k_file(tmp_path / "q.jsonl", ["#### 1", "#### 2", "#### 3"], ["What is 0+1?", None, 3])
    assert [str(b) for b in read_rows(path, "gsm8k").bad] == [f"{path} row 1: question is null",
                                                             f"{path} row 2: question is int 3, not a string"]
    parquet = tmp_path / "prompts.parquet"  # a prompt file is not a GSM8K file
    pq.write_table(pa.table({"prompt": ["What is 0+1?"], "answer": ["#### 1"]}), parquet)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['question'\]; a GSM8K file needs string columns "
                       r"'question' and 'answer' \(a worked solution whose final line is '#### <number>'\)"):
        read_rows(parquet, "gsm8k")
    # GSM8K is also published as Parquet, with the same columns.
    pq.write_table(pa.table({"question": ["What is 0+1?"], "answer": ["0+1=1\n#### 1"]}), tmp_path / "g.parquet")
    assert [(p.prompt_id, p.answer) for p in read_prompts(tmp_path / "g.parquet", layout="gsm8k")] == [("g-0", "1")]


@needs_gsm8k
def test_the_real_files_load_whole() -> None:
    """All 7473 train and 1319 test rows are usable: every answer ends '#### <number>'; a few numbers are negative
    or have thousands commas, none has decimals."""
    for name, count, negative in (("train", 7473, 3), ("test", 1319, 2)):
        rows = read_rows(GSM8K / f"{name}.jsonl", "gsm8k")
        assert (len(rows.prompts), rows.bad) == (count, [])
        assert rows.rows == list(range(count)) and not rows.has_ids
        references = [p.answer for p in rows.prompts]
        assert sum(r.startswith("-") for r in references) == negative
        assert all(r.lstrip("-").isdigit() for r in references)  # commas removed; no decimals in either file
        with (GSM8K / f"{name}.jsonl").open() as f:
            first = json.loads(f.readline())
        assert rows.prompts[0].text == first["question"] and rows.prompts[0].prompt_id == f"{name}-0"
    train = read_rows(GSM8K / "train.jsonl", "gsm8k").prompts
    assert train[0].answer == "72"  # "... = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    assert train[1].answer == "10"


@needs_gsm8k
def test_a_gsm8k_run_holds_out_eval_rows_or_reads_the_test_file(tmp_path: Path) -> None:
    """Without task.eval_file, task.num_eval rows of train.jsonl are held out as the parquet task does, into
    Parquet prompt rows whose answer is the reference number."""
    from rlsys.prepare import load_datasets

    base = [f"output.cache_dir={tmp_path / 'cache'}", "task.name=gsm8k", f"task.train_file={GSM8K / 'train.jsonl'}",
            "model.max_position_embeddings=2048", "warmup.steps=0"]  # the tiny char model: a question is ≤ 985 chars
    data = load_datasets(load_config(None, [*base, "task.num_eval=100"]))
    assert (len(data.train_prompts), len(data.eval_prompts), data.dropped) == (7373, 100, [])
    assert read_prompts(data.eval_file) == data.eval_prompts and read_prompts(data.train_file) == data.train_prompts
    assert {p.prompt_id for p in data.train_prompts + data.eval_prompts} == {f"train-{i}" for i in range(7473)}
    # test.jsonl as the eval file: the tiny model's character tokenizer is built from the train questions, and two
    # test questions hold characters none of them has ('#', '—'): unknown characters, dropped here.
    data = load_datasets(load_config(None, [*base, f"task.eval_file={GSM8K / 'test.jsonl'}", "task.bad_rows=drop"]))
    assert (len(data.train_prompts), len(data.eval_prompts)) == (7473, 1317)
    assert data.dropped_rows == {"unknown characters in prompt": 2} and data.eval_file == str(GSM8K / "test.jsonl")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['prompt or messages'\]"):  # not a prompt file
        load_datasets(load_config(None, [base[0], "task.name=parquet", *base[2:]]))


def test_gsm8k_config_needs_a_train_file_and_defaults_to_math_verify(tmp_path: Path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for path in (train, test):
        path.write_text("")  # exists: what is in it is checked at load time
    with pytest.raises(ConfigError, match="task.train_file must be set when task.name=gsm8k: the path of a GSM8K file"):
        load_config(None, ["task.name=gsm8k"])
    with pytest.raises(ConfigError, match=f"task.eval_file='{tmp_path / 'nope.jsonl'}' does not exist; give the path "
                       "of a GSM8K file"):
        load_config(None, ["task.name=gsm8k", f"task.train_file={train}", f"task.eval_file={tmp_path / 'nope.jsonl'}"])
    gsm8k = ["task.name=gsm8k", f"task.train_file={train}"]
    cfg = load_config(None, gsm8k)
    assert cfg.reward.fn == "math_verify" and [t.fn for t in cfg.reward.terms] == ["math_verify"]
    assert load_config(None, [*gsm8k, f"task.eval_file={test}"]).task.eval_file == str(test)
    # A reward the user names is kept, even the global default; components replace fn and leave it alone.
    assert load_config(None, [*gsm8k, "reward.fn=addition_exact"]).reward.fn == "addition_exact"
    exp = tmp_path / "exp.yaml"
    exp.write_text("reward:\n  fn: exact_match\n")
    assert load_config(exp, gsm8k).reward.fn == "exact_match"
    cfg = load_config(None, [*gsm8k, "reward.components=[{name: correct, fn: math_verify}, {name: fmt, fn: "
                                      "regex_format, weight: 0, params: {pattern: '####'}}]"])
    assert cfg.reward.fn == "addition_exact" and [t.name for t in cfg.reward.terms] == ["correct", "fmt"]
    # Other tasks keep addition_exact.
    assert load_config(None, ["task.name=parquet", f"task.train_file={train}"]).reward.fn == "addition_exact"
    assert load_config().reward.fn == "addition_exact"


def test_gsm8k_settings_that_cannot_act_are_refused(tmp_path: Path) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for path in (train, test):
        path.write_text("")
    gsm8k = ["task.name=gsm8k", f"task.train_file={train}"]
    for key, value in (("task.num_train", 300), ("task.num_digits", 3)):
        with pytest.raises(ConfigError, match=f"{key}={value} has no effect here: it acts only with "
                           r"a synthetic task \(task.name=synthetic_\*\)"):
            load_config(None, [*gsm8k, f"{key}={value}"])
    with pytest.raises(ConfigError, match="task.num_eval=10 has no effect here: it acts only without task.eval_file"):
        load_config(None, [*gsm8k, f"task.eval_file={test}", "task.num_eval=10"])
    with pytest.raises(ConfigError, match="task.train_file=.* has no effect here: it acts only with "
                       "task.name=parquet or gsm8k"):
        load_config(None, [f"task.train_file={train}"])


def test_the_smollm2_examples_format_term_wants_a_number_in_the_box():
    """A 30-step run of the example with '\\boxed{<anything>}' as its format term learned to write the instruction's
    placeholder "\\boxed{N}" for the format reward; the term now wants a number there."""
    import yaml

    from rlsys.config import EXAMPLES
    from rlsys.rewards.text import regex_format

    example = yaml.safe_load((EXAMPLES / "smollm2_gsm8k.yaml").read_text())
    (term,) = [c for c in example["reward"]["components"] if c["name"] == "boxed"]
    assert term["fn"] == "regex_format"
    score = lambda text: regex_format(text, "", **term["params"])  # noqa: E731
    for text in ("So the final answer is \\boxed{N}", "\\boxed{}", "\\boxed{x + 1}", "the answer is 18"):
        assert score(text) == 0.0, text
    for text in ("So the final answer is \\boxed{18}.", "\\boxed{1,234.5}", "\\boxed{ -3 }\n", "\\boxed{$18}"):
        assert score(text) == 1.0, text
