"""Tests for rlsys.config and the ``rlsys train`` CLI: the error messages the project promises.

Every mistake a user can make in a YAML file or a ``key=value`` override must come back as a ConfigError whose
message names the offending key and says what to change, never as a raw OmegaConf traceback.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlsys.cli import main
from rlsys.config import DEFAULT_CONFIG, ConfigError, RLConfig, load_config, to_dict, to_yaml, validate


def _error(overrides: list[str], path: str | Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---- the embedded default ----


def test_default_config_loads_and_validates() -> None:
    cfg = load_config()
    assert isinstance(cfg, RLConfig)
    validate(cfg)  # idempotent: the loaded config is already valid
    # Values come from configs/default.yaml, not just the dataclass defaults.
    on_disk = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert cfg.train.num_steps == on_disk["train"]["num_steps"]
    assert cfg.train.groups_per_step == on_disk["train"]["groups_per_step"]
    assert cfg.warmup.steps == on_disk["warmup"]["steps"]
    assert cfg.rollout.backend == "hf"
    assert cfg.task.name == "synthetic_addition"
    assert cfg.model.path is None


def test_samples_per_step_is_groups_times_group_size() -> None:
    cfg = load_config(None, ["train.groups_per_step=6", "rollout.group_size=5"])
    assert cfg.samples_per_step == 30
    cfg.train.groups_per_step = 2  # a derived property, never stored
    assert cfg.samples_per_step == 10


def test_overrides_are_typed_and_applied_on_top_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  num_steps: 11\n  max_staleness: 3\nlearner:\n  lr: 0.5\n")
    cfg = load_config(path, ["train.num_steps=7", "output.save_samples=false"])
    assert cfg.train.num_steps == 7  # override wins over the file
    assert cfg.train.max_staleness == 3  # the file wins over the dataclass default
    assert cfg.learner.lr == 0.5 and isinstance(cfg.learner.lr, float)
    assert cfg.output.save_samples is False
    # A file replaces the embedded default rather than layering on it: unset fields are dataclass defaults.
    assert cfg.warmup.steps == RLConfig().warmup.steps


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.num_steps=9", "model.hidden_size=64"])
    path = tmp_path / "dump.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)


# ---- unknown keys and wrong types ----


def test_unknown_key_in_override_is_named() -> None:
    msg = _error(["train.num_stepz=3"])
    assert "train.num_stepz" in msg
    assert "unknown key" in msg
    assert "--print-config" in msg  # tells the user where to find the valid keys


def test_unknown_top_level_key_in_override_is_named() -> None:
    msg = _error(["bogus=1"])
    assert "'bogus'" in msg and "unknown key" in msg


def test_unknown_key_in_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  num_steps: 5\n  num_stepz: 3\n")
    msg = _error([], path)
    assert "train.num_stepz" in msg
    assert "unknown key" in msg
    assert str(path) in msg  # which file has the problem


def test_wrong_type_in_override_names_the_key() -> None:
    msg = _error(["train.num_steps=abc"])
    assert "train.num_steps" in msg
    assert "abc" in msg


def test_wrong_type_in_yaml_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("output:\n  save_samples: maybe\n")
    msg = _error([], path)
    assert "output.save_samples" in msg
    assert "maybe" in msg


def test_override_without_equals_sign() -> None:
    msg = _error(["train.num_steps"])
    assert "train.num_steps" in msg
    assert "key=value" in msg


def test_missing_config_file() -> None:
    msg = _error([], "/definitely/not/here.yaml")
    assert "/definitely/not/here.yaml" in msg
    assert "does not exist" in msg


# ---- values that type-check but cannot work ----


@pytest.mark.parametrize(
    ("overrides", "must_contain"),
    [
        (["rollout.group_size=-1"], ["rollout.group_size=-1", "positive"]),
        (["rollout.group_size=0"], ["rollout.group_size=0", "positive"]),
        (["learner.num_learners=0"], ["learner.num_learners=0", "positive"]),
        (["train.max_staleness=-1"], ["train.max_staleness=-1", "≥ 0"]),
        (["learner.lr=0"], ["learner.lr=0", "> 0"]),
        (["learner.zero_stage=4"], ["learner.zero_stage=4", "0, 1, 2, 3"]),
        (["algo.kl_estimator=k9"], ["algo.kl_estimator", "k1, k2, k3"]),
        (["task.name=math"], ["task.name='math'", "synthetic_addition", "parquet", "gsm8k"]),
        (
            ["train.groups_per_step=3", "learner.num_learners=2"],
            ["train.groups_per_step=3", "divisible", "learner.num_learners=2"],
        ),
        (["model.hidden_size=100", "model.num_heads=3"], ["model.hidden_size=100", "divisible", "model.num_heads=3"]),
        (
            ["task.name=parquet", "task.train_file=/nonexistent.parquet"],
            ["task.train_file='/nonexistent.parquet'", "does not exist", "Parquet or JSONL file"],
        ),
        (["task.name=parquet"], ["task.train_file must be set"]),
        (["model.path=/nope"], ["model.path='/nope'", "not a directory", "local Hugging Face checkpoint"]),
        (["rollout.backend=sglang"], ["rollout.backend='sglang'", "hf, vllm"]),
        (["rollout.backend=vllm", "rollout.vllm_kv_cache_gib=-1"], ["rollout.vllm_kv_cache_gib=-1.0", "≥ 0"]),
        (["rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0", "rollout.vllm_gpu_memory_utilization=0"],
         ["rollout.vllm_gpu_memory_utilization=0.0", "(0, 1]"]),
        (["rollout.backend=vllm", "rollout.tensor_parallel_size=2"],
         ["rollout.tensor_parallel_size=2 needs rollout.num_gpus ≥ 2"]),
        (["rollout.backend=vllm", "rollout.tensor_parallel_size=0"], ["rollout.tensor_parallel_size=0", "≥ 1"]),
        (["rollout.backend=vllm", "rollout.vllm_max_model_len=4"],
         ["rollout.vllm_max_model_len=4 leaves no room", "rollout.max_new_tokens=6"]),
        (["rollout.vllm_kv_cache_gib=2"], ["rollout.vllm_kv_cache_gib=2.0 has no effect", "rollout.backend=vllm"]),
        (["rollout.backend=vllm", "rollout.weight_transfer=nccl"], ["rollout.weight_transfer=nccl needs GPUs",
                                                                    "learner.num_gpus=0"]),
        (["rollout.backend=vllm", "rollout.weight_transfer=nccl", "rollout.num_gpus=1", "learner.num_gpus=1",
          "rollout.inflight_weight_updates=true"], ["received between batches only"]),
        (["rollout.backend=vllm", "rollout.weight_transfer=ipc"], ["rollout.weight_transfer", "ipc"]),
        (["rollout.backend=vllm", "rollout.inflight_weight_updates=true", "env.name=calculator",
          "warmup.target_accuracy=0"], ["rollout.inflight_weight_updates=True has no effect", "single-turn"]),
        (["rollout.backend=vllm", "rollout.vllm_gpu_memory_utilization=0.5"],
         ["rollout.vllm_gpu_memory_utilization=0.5 has no effect", "rollout.vllm_kv_cache_gib=0"]),
        (["algo.advantage=ppo"], ["algo.advantage='ppo'", "grpo", "dr_grpo", "rloo", "gae"]),
        (["algo.policy_loss=trpo"], ["algo.policy_loss='trpo'", "ppo", "dual_clip", "gspo", "cispo", "reinforce"]),
        (["algo.loss_agg=sum"], ["algo.loss_agg='sum'", "token_mean", "seq_mean_token_mean", "constant"]),
        (["algo.is_mode=clip"], ["algo.is_mode='clip'", "plain", "tis", "mis"]),
        (["algo.kl_in=both"], ["algo.kl_in='both'", "loss", "reward"]),
        (["algo.reference=gpu"], ["algo.reference='gpu'", "learner", "actor"]),
        (["algo.minibatches=3"], ["train.groups_per_step=16", "learner.num_learners × algo.minibatches = 3"]),
        (["algo.overlong_buffer=7"], ["algo.overlong_buffer=7", "rollout.max_new_tokens=6"]),
        (["algo.is_cap=1.0"], ["algo.is_cap=1.0", "> 1"]),
        (["algo.clip_eps_high=0"], ["algo.clip_eps_high=0", "> 0"]),
        (["algo.gamma=1.5"], ["algo.gamma=1.5", "[0, 1]"]),
        (["reward.fn=nope"], ["reward.fn='nope'", "not a registered reward", "addition_exact", "module:function"]),
        (["reward.components=[{name: a, fn: exact_match}, {name: a, fn: regex_format}]"],
         ["duplicate names ['a']"]),
        (["reward.components=[{name: 'bad name', fn: exact_match}]"], ["reward.components[0].name='bad name'"]),
        (["reward.components=[{name: ok, fn: no_such}]"], ["reward.components[0].fn='no_such'"]),
        (["reward.correct_component=fmt"], ["reward.correct_component='fmt'", "['addition_exact']"]),
        (
            ["train.max_staleness=0", "train.sync_every=3"],
            ["train.max_staleness=0", "sync_every - 1 = 2", "raise max_staleness or lower sync_every"],
        ),
    ],
)
def test_impossible_values_name_key_and_fix(overrides: list[str], must_contain: list[str]) -> None:
    msg = _error(overrides)
    assert msg.startswith("invalid configuration")
    for fragment in must_contain:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_missing_eval_file_is_reported(tmp_path: Path) -> None:
    train = tmp_path / "train.parquet"
    train.write_bytes(b"not checked at config time, only existence")
    msg = _error(["task.name=parquet", f"task.train_file={train}", f"task.eval_file={tmp_path / 'eval.parquet'}"])
    assert "task.eval_file=" in msg and "eval.parquet" in msg
    assert "task.train_file" not in msg  # the existing train file is fine


def test_all_problems_are_listed_at_once() -> None:
    msg = _error(["rollout.group_size=-1", "train.max_staleness=-1", "rollout.backend=sglang", "model.path=/nope"])
    bullets = [line for line in msg.splitlines() if line.strip().startswith("- ")]
    assert len(bullets) == 4
    for key in ("rollout.group_size", "train.max_staleness", "rollout.backend", "model.path"):
        assert sum(key in b for b in bullets) == 1, key


def test_yaml_value_problems_are_validated_too(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  max_staleness: -2\n")
    msg = _error([], path)
    assert "train.max_staleness=-2" in msg


# ---- the CLI ----


def test_cli_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "train.num_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "num_steps: 7" in out
    printed = yaml.safe_load(out)
    assert printed["train"]["num_steps"] == 7
    assert set(printed) == set(to_dict(load_config()))


def test_cli_print_config_with_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  max_staleness: 4\n")
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_staleness"] == 4


def test_cli_unknown_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "bogus.key=1"]) == 2
    captured = capsys.readouterr()
    assert "configuration error" in captured.err
    assert "bogus" in captured.err
    assert captured.out == ""


def test_cli_invalid_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "train.groups_per_step=3", "learner.num_learners=2"]) == 2
    err = capsys.readouterr().err
    assert "train.groups_per_step=3" in err and "divisible" in err


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_console_script_print_config() -> None:
    script = Path(sys.executable).parent / "rlsys"
    assert script.exists(), f"console script not installed at {script}"
    result = subprocess.run([str(script), "train", "--print-config"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["num_steps"] == load_config().train.num_steps
    assert printed["rollout"]["backend"] == "hf"


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "gspo", "ppo_gae", "rloo", "reinforce_pp", "cispo"])
def test_every_algorithm_recipe_loads_over_the_default(name: str) -> None:
    from rlsys.config import algo_recipe

    recipe = yaml.safe_load(algo_recipe(name).read_text())
    assert set(recipe) == {"algo"}, "a recipe sets algorithm keys only"
    cfg = load_config([DEFAULT_CONFIG, algo_recipe(name)])
    for key, value in recipe["algo"].items():
        assert getattr(cfg.algo, key) == value
    assert cfg.train.num_steps == load_config().train.num_steps  # everything else is the default


def test_unknown_algorithm_recipe_names_the_known_ones() -> None:
    from rlsys.config import algo_recipe

    with pytest.raises(ConfigError, match="unknown algorithm 'ppo2'.*dapo.*gspo"):
        algo_recipe("ppo2")


def test_cli_algo_flag_merges_the_recipe(capsys) -> None:
    from rlsys.cli import main

    assert main(["train", "--algo", "dapo", "--print-config", "train.num_steps=5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["algo"]["clip_eps_high"] == 0.28 and printed["algo"]["dynamic_sampling"] is True
    assert printed["train"]["num_steps"] == 5


def test_reward_components_are_checked_scope_step_and_model(tmp_path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):  # a checkpoint, as far as the check looks
        (tmp_path / name).write_text("{}")
    good = load_config(None, [
        "reward.components=[{name: c, fn: addition_exact}, "
        f"{{name: rm, weight: 0.5, model: {{kind: classifier, paths: ['{tmp_path}'], ensemble: min}}}}, "
        f"{{name: j, model: {{kind: judge, paths: ['{tmp_path}'], "
        "template: 'rate {response} from {low} to {high}'}}, "
        "{name: p, fn: 'reward_fixtures:step_has_digit', scope: process, step_split: ' then ', "
        "step_aggregate: min_form}]"])
    assert [c.name for c in good.reward.terms] == ["c", "rm", "j", "p"]
    assert good.reward.terms[1].model.paths == [str(tmp_path)] and good.reward.terms[3].scope == "process"
    with pytest.raises(ConfigError) as info:
        load_config(None, [
            "reward.components=[{name: a, fn: addition_exact, scope: batch}, "
            "{name: b, fn: 'reward_fixtures:step_has_digit', scope: process, step_aggregate: max, step_split: '('}, "
            "{name: c, fn: addition_exact, model: {paths: []}}, "
            "{name: d, scope: group, model: {kind: judge, paths: ['/no/such/dir'], template: '{prompt}'}}, "
            f"{{name: e, scope: process, model: {{kind: classifier, paths: ['{tmp_path}'], ensemble: median, "
            "reference_relative: true}}, "
            f"{{name: f, model: {{kind: judge, paths: ['{tmp_path}'], template: '{{response}} {{'}}}}]"])
    message = str(info.value)
    for needle in ["components[0].scope='batch'", "components[1].step_aggregate='max'", "not a valid regular",
                   "has both fn='addition_exact' and a model", "components[2].model.paths is empty",
                   "scope='group' is not supported for a judge", "paths[0]='/no/such/dir' is not a directory",
                   "model.template: judge template has no {response} placeholder",
                   "components[5].model.template: judge template is not a valid format string",
                   "reference_relative needs kind=classifier and scope=sample",
                   "model.ensemble='median'"]:
        assert needle in message, needle


def test_the_default_kl_estimator_is_the_one_whose_gradient_is_the_reverse_kl_where_it_is_used():
    """k2 in the loss, k1 in the reward (the gradients are pinned in tests/test_algos.py); an explicit choice wins."""
    assert load_config(None, ["algo.kl_in=loss"]).algo.kl_kind == "k2"
    assert load_config(None, ["algo.kl_in=reward"]).algo.kl_kind == "k1"
    assert load_config(None, ["algo.kl_in=loss", "algo.kl_estimator=k3"]).algo.kl_kind == "k3"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["rollout.group_size=1"], ["rollout.group_size=1 with algo.advantage=grpo", "nothing would train"]),
    (["rollout.group_size=1", "algo.advantage=rloo"], ["algo.advantage=rloo"]),
    (["rollout.group_size=1", "algo.advantage=dr_grpo"], ["algo.advantage=dr_grpo"]),
    (["rollout.group_size=1", "algo.advantage=reinforce_pp_baseline"], ["algo.advantage=reinforce_pp_baseline"]),
    (["rollout.group_size=1", "algo.advantage=reinforce_pp", "algo.dynamic_sampling=true"],
     ["algo.dynamic_sampling=true with rollout.group_size=1"]),
    (["rollout.group_size=1", "algo.advantage=reinforce_pp", "algo.filter_zero_variance=true"],
     ["algo.filter_zero_variance=true with rollout.group_size=1"]),
    (["reward.components=[{name: fmt, fn: regex_format, params: {patern: '[0-9]+'}}]"],
     ["reward.components[0].params of fn='regex_format': unknown key(s) 'patern' and missing required key(s) "
      "'pattern' (it takes pattern, flags, max_chars)"]),
    (["reward.components=[{name: fmt, fn: regex_format}]"],
     ["reward.components[0].params of fn='regex_format': missing required key(s) 'pattern'"]),
    (["reward.components=[{name: short, fn: length_penalty, params: {tolerance: 1}}]"],
     ["missing required key(s) 'target'"]),
    (["reward.components=[{name: ok, fn: exact_match, params: {strict: true}}]"],
     ["unknown key(s) 'strict' (it takes no params)"]),
])
def test_settings_that_would_silently_do_nothing_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    for text in expected:
        assert text in str(e.value), str(e.value)


def test_group_size_one_is_fine_where_advantages_are_not_group_relative():
    for advantage in ("reinforce_pp", "gae"):
        load_config(None, ["rollout.group_size=1", f"algo.advantage={advantage}"])
    load_config(None, ["reward.components=[{name: short, fn: length_penalty, params: {target: 3}}]"])


def _checkpoint_stub(directory: Path) -> Path:
    """A directory that passes the config's checkpoint check (which looks for the files, not into them)."""
    directory.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (directory / name).write_text("{}")
    return directory


def test_every_setting_that_acts_only_with_another_is_refused_without_it_and_accepted_with_it(tmp_path):
    """Each key of the config's table of dependent settings: changed from its default where it cannot act, the
    config is refused naming the key and what it needs; where it acts, the same value is accepted."""
    from rlsys.config import _ACTS_WHEN

    ckpt, data, other = _checkpoint_stub(tmp_path / "ckpt"), str(tmp_path / "d.parquet"), str(tmp_path / "e.parquet")
    for path in (data, other):
        Path(path).write_text("")  # exists: what is in it is checked at load time, not here
    parquet = ["task.name=parquet", f"task.train_file={data}"]
    components = ["reward.components=[{name: a, fn: addition_exact}]"]
    cases = {  # key: (value, a config where it cannot act, one where it acts)
        **{f"model.{k}": (v, [f"model.path={ckpt}"], []) for k, v in (
            ("hidden_size", 64), ("intermediate_size", 96), ("num_layers", 3), ("num_heads", 8),
            ("max_position_embeddings", 32))},
        "model.reference_path": (str(ckpt), [], ["algo.kl_coef=0.1"]),
        "model.critic_path": (str(ckpt), [], ["algo.advantage=gae"]),
        "task.train_file": (data, [], ["task.name=parquet"]),
        "task.eval_file": (other, [], parquet),
        "task.num_digits": (3, parquet, []),
        "task.num_eval": (10, [*parquet, f"task.eval_file={other}"], parquet),
        "task.num_train": (300, parquet, []),
        "warmup.check_every": (10, ["warmup.target_accuracy=0"], []),
        "reward.fn": ("exact_match", components, []),
        "algo.is_mode": ("mis", [], ["algo.decoupled=true"]),
        "algo.is_level": ("sequence", [], ["algo.decoupled=true"]),
        "algo.is_cap": (3.0, ["algo.decoupled=true", "algo.is_mode=plain"], ["algo.decoupled=true"]),
        **{f"algo.{k}": (v, [], ["algo.advantage=gae"]) for k, v in (
            ("gamma", 0.9), ("lam", 0.95), ("value_clip", 0.5), ("critic_lr", 0.01))},
        "algo.dual_clip_c": (4.0, [], ["algo.policy_loss=dual_clip"]),
        "algo.adv_eps": (0.01, ["algo.advantage=rloo"], ["algo.advantage=reinforce_pp"]),
        "algo.filter_zero_variance": (True, ["algo.dynamic_sampling=true"], []),
        "reward.num_gpus": (1.0, [], [f"reward.components=[{{name: rm, model: {{kind: classifier, paths: "
                                      f"['{ckpt}']}}}}]"]),
        "algo.clip_eps_low": (0.1, ["algo.policy_loss=reinforce"], []),
        "algo.clip_eps_high": (0.28, ["algo.policy_loss=reinforce"], []),
        "ray.num_cpus": (4, ["ray.address=auto"], []),
        "rollout.vllm_kv_cache_gib": (2.0, [], ["rollout.backend=vllm"]),
        "rollout.vllm_enforce_eager": (False, [], ["rollout.backend=vllm"]),
        "rollout.vllm_max_model_len": (128, [], ["rollout.backend=vllm"]),
        "rollout.tensor_parallel_size": (2, [], ["rollout.backend=vllm", "rollout.num_gpus=2"]),
        "rollout.inflight_weight_updates": (True, [], ["rollout.backend=vllm"]),
        "rollout.weight_transfer": ("nccl", [], ["rollout.backend=vllm", "rollout.num_gpus=1", "learner.num_gpus=1"]),
        "rollout.vllm_gpu_memory_utilization": (0.5, ["rollout.backend=vllm"],
                                                ["rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0"]),
        **{f"env.{k}": (v, [], ["env.name=calculator", "warmup.target_accuracy=0"]) for k, v in (
            ("num_workers", 2), ("num_cpus", 0.5), ("max_concurrency", 8), ("step_timeout_s", 5.0),
            ("restart_timeout_s", 60.0), ("max_turns", 2), ("max_action_tokens", 4), ("observation_role", "user"))},
        "env.params": ({"latency_s": 0.1}, [], ["env.name=calculator", "warmup.target_accuracy=0"]),
    }
    assert set(cases) == {key for key, _, _ in _ACTS_WHEN}, "a dependent setting without a case here"
    for key, (value, inert, active) in cases.items():
        with pytest.raises(ConfigError, match=rf"{key}={value!r} has no effect here: it acts only "):
            load_config(None, [*inert, f"{key}={value}"])
        load_config(None, [*active, f"{key}={value}"])


def test_switching_a_feature_off_does_not_make_its_settings_an_error():
    """warmup.steps=0 on the default (which sets a target accuracy), kl_coef=0 on a recipe that sets an estimator."""
    load_config(None, ["warmup.steps=0"])
    load_config(None, ["algo.kl_coef=0", "algo.kl_estimator=k1", "algo.kl_in=reward"])


@pytest.mark.parametrize(("component", "expected"), [
    ("{name: f, fn: regex_format, params: {pattern: '(['}}", "invalid regex pattern '(['"),
    ("{name: f, fn: regex_format, params: {pattern: 'a', flags: 'q'}}", "unknown flag letter 'q'"),
    ("{name: f, fn: length_penalty, params: {target: -1}}", "'target' must be >= 0, got -1"),
    ("{name: f, fn: length_penalty, params: {target: 3, unit: 'lines'}}", "'unit' must be one of"),
    ("{name: f, fn: overlong_penalty, params: {max_len: 4, buffer: 8}}", "'buffer' (8) must be <= 'max_len' (4)"),
    ("{name: f, fn: code_tests, params: {wall_s: -1}}", "wall_s must be a finite number of seconds > 0"),
    ("{name: f, fn: code_tests, params: {max_code_chars: 0}}", "'max_code_chars' must be an int >= 1"),
    ("{name: f, fn: math_verify, params: {require: 'boxd'}}", "'require' must be one of"),
    ("{name: f, fn: math_verify, params: {rel_tol: 2}}", "'rel_tol' must be a number in [0, 1)"),
    ("{name: f, fn: 'reward_fixtures:needs_a_positive_scale', params: {scale: 0}}", "scale must be > 0, got 0"),
])
def test_reward_params_with_values_the_function_rejects_are_refused_at_start_up(component, expected):
    """Without the check every sample would fail: e.g. an invalid regex fails in regex_format on every call."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"reward.components=[{component}]"])
    assert "reward.components[0].params of fn=" in str(e.value) and expected in str(e.value), str(e.value)


def test_good_reward_params_and_defaults_pass_the_functions_own_check():
    for component in ("{name: f, fn: regex_format, params: {pattern: '[0-9]+', flags: 'i'}}",
                      "{name: f, fn: length_penalty, params: {target: 0, scale: 2}}",
                      "{name: f, fn: code_tests}", "{name: f, fn: math_verify, params: {require: boxed}}",
                      "{name: f, fn: 'reward_fixtures:needs_a_positive_scale'}"):
        load_config(None, [f"reward.components=[{component}]"])


def test_other_settings_that_cannot_work_are_refused_naming_the_key():
    cases = [
        (["reward.components=[{name: a, fn: addition_exact, weight: 0}, {name: b, fn: exact_match, weight: 0}]"],
         "every reward term has weight 0"),
        (["reward.components=[{name: a, fn: addition_exact, weight: 1}, {name: b, fn: addition_exact, weight: -0.5},"
          " {name: c, fn: addition_exact, weight: -0.5}]"], "the reward terms cancel"),
        (["reward.fn=reward_fixtures:takes_one_argument"], "takes 1 positional argument(s); a reward function is "
         "called as fn(completion, reference, **params)"),
        (["task.num_digits=1", "task.num_train=300"], "task.num_train=300 + task.num_eval=200 is more than the 100 "
         "distinct 1-digit problems"),
        (["warmup.batch_size=0"], "warmup.batch_size=0 must be a positive integer"),
        (["warmup.lr=0"], "warmup.lr=0.0 must be > 0"),
        (["task.num_eval=0"], "task.num_eval=0 must be a positive integer"),
        (["algo.clip_eps_low=1.5"], "algo.clip_eps_low=1.5 must be ≤ 1"),
        (["learner.lr=inf"], "learner.lr=inf must be a finite number"),
        (["algo.kl_coef=inf"], "algo.kl_coef=inf must be a finite number"),
        (["task.name=parquet", "task.train_file=/"], "task.train_file='/' is a directory; give the path of one "
         "Parquet or JSONL file"),
        (["task.name=parquet", f"task.train_file={__file__}", f"task.eval_file={__file__}"],
         "is the training file: held-out accuracy would be accuracy on the training data"),
        (["reward.fn=reward_fixtures:needs_a_scale"], "missing required key(s) 'scale'"),
        (["reward.fn=reward_fixtures:needs_a_scale"], "give them as a component: reward.components=[{name: "
         "needs_a_scale, fn: reward_fixtures:needs_a_scale, params: {...}}]"),
    ]
    for overrides, expected in cases:
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert expected in str(e.value), str(e.value)
    load_config(None, ["reward.components=[{name: a, fn: addition_exact}, {name: b, fn: exact_match, weight: 0}]"])


def test_a_model_path_without_config_json_weights_or_tokenizer_is_not_a_checkpoint(tmp_path):
    overrides = ([f"model.path={tmp_path}"],
                 [f"reward.components=[{{name: rm, model: {{kind: classifier, paths: ['{tmp_path}']}}}}]"])
    for missing, message in (("config.json", "no config.json — not a Hugging Face checkpoint"),
                             ("model.safetensors", r"no weights \(none of \*.safetensors"),
                             ("tokenizer.json", r"no tokenizer \(none of tokenizer.json")):
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (tmp_path / name).unlink(missing_ok=True)
            if name != missing:
                (tmp_path / name).write_text("{}")
        for o in overrides:
            with pytest.raises(ConfigError, match=message):
                load_config(None, o)
        assert main(["eval", str(tmp_path)]) == 2


def test_a_reference_or_critic_checkpoint_must_read_the_policys_token_ids(tmp_path):
    """model.reference_path / critic_path with another tokenizer (here: another alphabet), or an embedding too small
    for the policy's tokens, are refused when the datasets are checked (before Ray starts); a checkpoint with the
    policy's tokenizer passes. SmolLM2's tokenizer against Qwen2.5's: test_packaged.py."""
    import json

    from rlsys.config import ModelConfig
    from rlsys.data.model import build_tiny_llama
    from rlsys.data.tokenizer import build_char_tokenizer
    from rlsys.prepare import load_datasets

    base = ["task.num_train=50", "task.num_eval=10", f"output.cache_dir={tmp_path / 'cache'}", "algo.kl_coef=0.1",
            "algo.advantage=gae"]
    policy_tokenizer = load_datasets(load_config(None, base)).tokenizer

    def checkpoint(name: str, tokenizer) -> Path:
        build_tiny_llama(ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2),
                         tokenizer).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        return tmp_path / name

    same, other = checkpoint("same", policy_tokenizer), checkpoint("other", build_char_tokenizer("0123456789+="))
    small = checkpoint("small", policy_tokenizer)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 8}))
    for key in ("reference_path", "critic_path"):
        load_datasets(load_config(None, [*base, f"model.{key}={same}"]))
        with pytest.raises(ConfigError, match=rf"model.{key}='{other}' has another tokenizer than the policy \("
                                              r"\d+ tokens against \d+; \d+ tokens have other ids, e.g. "):
            load_datasets(load_config(None, [*base, f"model.{key}={other}"]))
        with pytest.raises(ConfigError, match=rf"model.{key}='{small}': its embedding has 8 rows"):
            load_datasets(load_config(None, [*base, f"model.{key}={small}"]))


def test_a_checkpoint_whose_files_do_not_load_is_a_config_error_naming_the_part(tmp_path, capsys):
    """config.json, weights and tokenizer files are there but broken: the error names model.path and the part."""
    for name, text in (("config.json", "{not json"), ("model.safetensors", "junk"), ("tokenizer.json", "{}")):
        (tmp_path / name).write_text(text)
    cfg = load_config(None, [f"model.path={tmp_path}", "task.num_train=50", "task.num_eval=10",
                             f"output.cache_dir={tmp_path / 'cache'}"])
    from rlsys.prepare import load_datasets

    with pytest.raises(ConfigError, match=rf"model.path='{tmp_path}': its (tokenizer|config.json) could not be loaded"):
        load_datasets(cfg)


def test_a_reward_function_that_does_not_import_is_refused_at_start_up(tmp_path):
    """Else every reward worker fails in its constructor, which Ray does not restart: the run would wait forever."""
    for fn in ("no_such_module_here:f", "rlsys.rewards.rules:no_such_fn"):
        with pytest.raises(ConfigError, match=f"fn='{fn}': could not import reward function"):
            load_config(None, [f"reward.fn={fn}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  num_steps: 3\n   bad_indent: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(("content", "expected"), [
    (b"- a\n- b\n", "the file must be a mapping of sections (model:, train:, ...), not a list"),
    (b"42\n", "does not fit the config"),
    (b"\xff\xfe bad", "is not UTF-8 text"),
    (b"reward:\n  components: {}\n", "does not fit the config"),
])
def test_a_config_file_of_the_wrong_shape_is_a_config_error(tmp_path, content, expected, capsys):
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config([path])
    assert main(["train", "--config", str(path), "--print-config"]) == 2


def test_an_override_whose_value_is_not_yaml_is_a_config_error(capsys):
    with pytest.raises(ConfigError, match=r"override 'reward.fn=:': its value is not valid YAML .*quote it"):
        load_config(None, ["reward.fn=:"])
    assert main(["train", "--print-config", "train.num_steps=:"]) == 2


def test_an_empty_algo_name_is_refused(capsys):
    assert main(["train", "--algo", "", "--print-config"]) == 2
    assert "unknown algorithm ''" in capsys.readouterr().err


def test_a_reward_module_that_exits_on_import_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(3)\ndef f(c, r):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"could not import reward function 'exits_on_import:f': SystemExit: 3"):
        load_config(None, ["reward.fn=exits_on_import:f"])


@pytest.mark.parametrize(("body", "how"), [
    ("import os\nos._exit(0)\n", "exit code 0"),  # would have ended rlsys with exit code 0 and no word
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", f"killed by signal {signal.SIGSEGV.value}"),
    ("import os\nprint('imported')\nos._exit(1)\n", "exit code 1"),
])
def test_a_reward_module_that_ends_its_process_on_import_is_a_config_error(tmp_path, monkeypatch, body, how):
    """Imported first in a child process, so the driver lives to say which module it was."""
    name = f"ends_on_import_{abs(hash(body))}"
    (tmp_path / f"{name}.py").write_text(body + "def f(c, r):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"fn='{name}:f': importing module '{name}' ended the process "
                                          rf"\({how}\) before the import finished"):
        load_config(None, [f"reward.fn={name}:f"])
    assert name not in sys.modules


def test_a_reward_module_that_prints_at_import_without_a_newline_is_accepted(tmp_path, monkeypatch):
    """Its unfinished line of output is not mistaken for an import that ended the process."""
    (tmp_path / "prints_on_import.py").write_text(
        "import sys\nsys.stdout.write('loading... ' * 1000)\nsys.stderr.write('x')\ndef f(c, r):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_config(None, ["reward.fn=prints_on_import:f"]).reward.fn == "prints_on_import:f"


def test_a_reward_module_slow_to_import_is_logged_while_waited_for_and_one_that_hangs_is_refused(
        tmp_path, monkeypatch, caplog):
    import rlsys.rewards.registry as registry

    monkeypatch.setattr(registry, "PROBE_PATIENCE_S", 0.5)
    monkeypatch.setattr(registry, "PROBE_TIMEOUT_S", 4.0)
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(1.5)\ndef f(c, r):\n    return 0.0\n")
    (tmp_path / "hangs_on_import.py").write_text("import time\ntime.sleep(3600)\ndef f(c, r):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level("WARNING", logger="rlsys.rewards.registry"):
        load_config(None, ["reward.fn=slow_import:f"])
    assert "importing reward module 'slow_import' (a check in a child process) has taken 0 s; waiting up to 4 s" \
        in caplog.text
    with pytest.raises(ConfigError, match=r"importing module 'hangs_on_import' did not finish within 4 s"):
        load_config(None, ["reward.fn=hangs_on_import:f"])


def test_a_built_in_reward_in_a_scope_it_does_not_score_is_refused():
    with pytest.raises(ConfigError, match=r"scope='group': fn='addition_exact' is a sample-scope reward"):
        load_config(None, ["reward.components=[{name: correct, fn: addition_exact, scope: group}]"])


def test_output_directories_that_are_files_are_refused(tmp_path):
    (tmp_path / "f").write_text("")
    for key in ("root", "cache_dir"):
        with pytest.raises(ConfigError, match=rf"output.{key}='{tmp_path / 'f'}' is a file; give a directory"):
            load_config(None, [f"output.{key}={tmp_path / 'f'}"])


def test_a_run_directory_that_holds_a_run_is_refused_before_anything_starts(tmp_path):
    from rlsys.train import run_dir_for

    cfg = load_config(None, [f"output.root={tmp_path}", "output.run_name=r"])
    assert run_dir_for(cfg) == (tmp_path / "r", None, None)  # not there yet: fine
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"output.run_name='r': .* already holds a run \(metrics.jsonl\)"):
        run_dir_for(cfg)
    (tmp_path / "r" / "checkpoints" / "step-00000002").mkdir(parents=True)  # no manifest: damaged
    resume = load_config(None, [f"output.root={tmp_path}", "output.run_name=r", "train.resume=true"])
    with pytest.raises(ConfigError, match=r"no valid checkpoint to resume from \(its 1 checkpoint\(s\) are all "
                                          r"damaged: see the warnings above\)"):
        run_dir_for(resume)
