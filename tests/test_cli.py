"""`rlsys eval`, `rlsys inspect` and `rlsys train --resume` refuse what they cannot read, with the reason."""

import pytest

from rlsys.cli import main


def test_inspect_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_eval_of_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a Hugging Face checkpoint" in capsys.readouterr().err


def test_eval_with_a_bad_override_is_a_config_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "reward.nope=1"]) == 2
    assert "reward.nope" in capsys.readouterr().err


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: None, "no such directory"), (lambda d: d.mkdir(), "no config.yaml there")])
def test_resume_of_a_directory_that_is_not_a_run(tmp_path, capsys, make, says):
    make(tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert f"--resume {tmp_path / 'run'}: {says}" in capsys.readouterr().err


def _run_dir(tmp_path, summary: dict | None):
    """A run directory as a run leaves it: metrics, a sample log with a trained and a left-out sample, a summary."""
    import json

    import numpy as np

    from rlsys.samples_io import SampleLog
    from rlsys.types import Group, Prompt, Sample

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/accuracy": 0.25}) + "\n")
    samples = tuple(Sample("p0", j, 0, np.array([1], np.int32), np.array([2, 3], np.int32),
                           np.zeros(2, np.float32), "stop", 0, "12", reward=r, reward_failed=np.isnan(r),
                           reward_error="boom" if np.isnan(r) else None) for j, r in enumerate([1.0, float("nan")]))
    log = SampleLog(run / "samples.parquet")
    log.write([Group(Prompt("p0", "5+7=", "12"), samples)], 1, ["", "reward failed"])
    log.close()
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_inspect_lists_the_data_rows_and_prompts_a_run_left_out_and_its_untrained_samples(tmp_path, capsys):
    rows = [{"file": "/data/train.parquet", "row": 17, "reason": "null", "detail": "prompt is null",
             "prompt_id": None}]
    prompts = [{"prompt_id": "q3", "epoch": 0, "attempts": 3, "error": "ValueError: prompt too long"}]
    run = _run_dir(tmp_path, {"dropped_row_list": rows, "failed_prompts": prompts})
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    for needle in ("data rows left out (task.bad_rows=drop): 1", "/data/train.parquet row 17: prompt is null",
                   "prompts dropped after failed requests: 1", "q3: ValueError: prompt too long",
                   "samples: 2 logged, 1 trained", "not trained (reward failed): 1", "1 × boom"):
        assert needle in out, out


def test_inspect_of_a_killed_run_reads_the_parts_it_finished(tmp_path, capsys):
    """Killed while writing a part: the part is still under its hidden temporary name, and is skipped."""
    run = _run_dir(tmp_path, None)
    (part,) = (run / "samples.parquet").glob("part-*.parquet")
    data = part.read_bytes()
    (run / "samples.parquet" / ".part-00001.parquet.tmp").write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no summary.json: the run did not finish" in out
    assert "samples: 2 logged, 1 trained" in out


def test_inspect_of_a_damaged_sample_log_says_so_instead_of_crashing(tmp_path, capsys):
    run = _run_dir(tmp_path, {})
    (part,) = (run / "samples.parquet").glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])  # damaged after the run (a disk, a copy cut short)
    assert main(["inspect", str(run)]) == 0
    assert "samples.parquet is unreadable: " in capsys.readouterr().out


def test_ctrl_c_during_training_exits_130_with_a_message(monkeypatch, capsys):
    import rlsys.train

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(rlsys.train, "train", interrupted)  # where the user pressed Ctrl-C does not matter here
    assert main(["train", "train.num_steps=1"]) == 130
    assert "rlsys: interrupted" in capsys.readouterr().err


def test_eval_runs_the_token_checks_with_the_checkpoints_tokenizer(tmp_path, capsys):
    """A held-out prompt longer than the checkpoint's context is named, as in training, instead of failing inside
    generate()."""
    from rlsys.config import ModelConfig
    from rlsys.data.model import build_tiny_llama
    from rlsys.data.tasks import write_parquet
    from rlsys.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    ckpt = tmp_path / "ckpt"
    build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                 max_position_embeddings=12), tok).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    train = write_parquet([{"id": f"t{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)],
                          tmp_path / "train.parquet")
    held_out = write_parquet([{"id": "e0", "prompt": "1+1=", "answer": "2"},
                              {"id": "long", "prompt": "1+2+3+4=", "answer": "10"}], tmp_path / "eval.parquet")
    assert main(["eval", str(ckpt), "task.name=parquet", f"task.train_file={train}", f"task.eval_file={held_out}",
                 "rollout.max_new_tokens=5", f"output.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "(id 'long'): prompt is 8 tokens; at most 7 fit" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("summary.json", '{"steps": 3, "dropped_row', "summary.json is unreadable"),
    ("summary.json", "[1, 2]", "summary.json is unreadable (it holds a list"),
    ("metrics.jsonl", '{"step": 0}\n{"st', None),  # a record cut short by a kill: left out
    ("metrics.jsonl", '{"step": 0}\nnot json\n{"step": 1}\n', "metrics.jsonl line 2 is not a JSON record"),
])
def test_inspect_of_a_run_with_a_cut_or_damaged_file_names_it(tmp_path, capsys, name, content, expected):
    run = _run_dir(tmp_path, {})
    (run / name).write_text(content)
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "samples: 2 logged, 1 trained" in out  # what can be read still is
    if expected:
        assert expected in out, out


def _saved_tiny_checkpoint(directory):
    from rlsys.config import ModelConfig
    from rlsys.data.model import build_tiny_llama
    from rlsys.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), tok
                     ).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_eval_of_a_checkpoint_whose_weights_do_not_load_fit_or_are_finite_is_refused(tmp_path, capsys):
    import json

    truncated = _saved_tiny_checkpoint(tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    other = _saved_tiny_checkpoint(tmp_path / "other")  # config.json names another architecture
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=32, n_layer=1, n_head=2)
    (other / "config.json").write_text(json.dumps(config))
    nan = _saved_tiny_checkpoint(tmp_path / "nan")  # a diverged run's checkpoint
    from safetensors.torch import load_file, save_file

    state = load_file(nan / "model.safetensors")
    state["model.norm.weight"][0] = float("nan")
    save_file(state, nan / "model.safetensors", metadata={"format": "pt"})
    for ckpt, expected in ((truncated, "its weights could not be loaded"),
                           (other, "its weights do not fit its config.json (gpt2)"),
                           (nan, "its weights hold NaN or infinite values, in 1 tensors, e.g. model.norm.weight")):
        assert main(["eval", str(ckpt), f"output.cache_dir={tmp_path / 'cache'}", "task.num_train=100",
                     "task.num_eval=10"]) == 2
        err = capsys.readouterr().err
        assert f"MODEL_DIR='{ckpt}'" in err and expected in err, err


def test_metrics_and_summary_write_strict_json_with_null_for_nan(tmp_path):
    """JSON has no NaN: a step whose reward is undefined (no sample scored) is null in metrics.jsonl, and so is a
    NaN figure of summary.json, so strict readers (JavaScript's JSON.parse, jq) read both files."""
    import json
    import math

    from rlsys.metrics import MetricsWriter, json_safe, read_metrics

    writer = MetricsWriter(tmp_path)
    writer.log(1, {"reward/mean": math.nan, "perf/samples_per_s": 12.5, "x": math.inf})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "step": 1, "reward/mean": None, "perf/samples_per_s": 12.5, "x": None}
    assert read_metrics(tmp_path) == [{"step": 1, "reward/mean": None, "perf/samples_per_s": 12.5, "x": None}]
    assert json_safe({"sync_s_mean": math.nan, "eval": {0: 0.5, 3: -math.inf}, "rows": [1.0, math.nan]}) == {
        "sync_s_mean": None, "eval": {0: 0.5, 3: None}, "rows": [1.0, None]}


def test_inspect_into_a_reader_that_quit_ends_quietly(tmp_path):
    """`rlsys inspect RUN | head -1`: the closed pipe ends the command as it ends cat (141), with no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    run = _run_dir(tmp_path, {"steps": 1})
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rlsys"), "inspect", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it has written anything: its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()[-2000:]


@pytest.mark.slow
def test_sigterm_of_the_driver_stops_the_run_as_ctrl_c_does(tmp_path):
    """A scheduler's stop (SIGTERM): exit 143 with rlsys's message instead of Ray's abort (134, a stack dump); the
    sample log is flushed and readable, and no summary is written (the run did not finish)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pyarrow.parquet as pq
    from conftest import tiny_overrides

    run_dir = tmp_path / "runs" / "t"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "rlsys"), "train",
                                 *tiny_overrides(tmp_path, "output.run_name=t", "train.num_steps=100000")],
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"}, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 900
            while '"train/loss"' not in ((run_dir / "metrics.jsonl").read_text()
                                         if (run_dir / "metrics.jsonl").is_file() else ""):
                assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 143, stderr[-3000:]
    assert "rlsys: terminated (SIGTERM); what the run wrote so far is in its run directory" in stderr
    assert pq.read_table(run_dir / "samples.parquet").num_rows > 0 and not (run_dir / "summary.json").exists()
