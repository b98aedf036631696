"""The environment protocol and the built-in tools, without Ray: the calculator, the Python tool through the code
sandbox, the registry's errors, how observations are rendered between actions, the warm-up's demonstrations, the
text stop criterion and the trajectory-scope rewards."""

from __future__ import annotations

import random
import time

import pytest
from transformers import AutoTokenizer

from rlsys.config import ConfigError, TaskConfig, load_config
from rlsys.data.chat import PromptFormat
from rlsys.data.tokenizer import build_char_tokenizer
from rlsys.data.warmup import demonstration_ids
from rlsys.engines.generation import StopOnText, stop_position
from rlsys.envs import EnvError, env_stop_strings, get_env_class, make_env
from rlsys.envs.base import check_reset, check_step
from rlsys.envs.calculator import evaluate
from rlsys.packaged import packaged_tokenizer
from rlsys.rewards import RewardComponent, RewardItem, RewardScorer
from rlsys.types import Prompt, Trajectory, Turn

PROMPT = Prompt("p", "47*86=", "4042")


# ---- the calculator ----

@pytest.mark.parametrize(("expression", "value"), [("47*86", 4042), ("2+3*4", 14), ("(2+3)*4", 20), ("-5+2", -3),
                                                    ("7//2", 3), ("7/2", 3.5), (" 12 ", 12), ("10%4", 2)])
def test_the_calculator_evaluates_arithmetic(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "2**999999", "abs(-1)", "x+1", "1/0", "9" * 61 + "*9",
                                        "", "1+", "[1]"])
def test_the_calculator_refuses_what_is_not_bounded_arithmetic(expression):
    with pytest.raises(ValueError):
        evaluate(expression)


def test_a_calculator_call_is_answered_and_an_answer_ends_the_trajectory():
    env = make_env("calculator", {})
    assert env.reset(PROMPT) is None
    obs, reward, done, info = env.step("let me compute <calc>47*86</calc>")
    assert (obs, reward, done) == ("4042", None, False) and info == {"expression": "47*86", "result": "4042"}
    assert env.step("4042") == (None, None, True, {})
    obs, _, done, info = env.step("<calc>47*</calc>")  # a tool's error is an observation: the policy may retry
    assert obs.startswith("error: not an arithmetic expression") and not done and "error" in info


def test_the_calculator_tags_template_and_stop_strings_come_from_params():
    params = {"open": "[", "close": "]", "observation_template": "={result} "}
    env = make_env("calculator", params)
    assert env.step("[3*28]")[0] == "=84 "
    assert env_stop_strings("calculator", params) == ("]",)
    assert env_stop_strings("calculator", {}) == ("</calc>",)


def test_a_slow_calculator_sleeps_per_call_only():
    env = make_env("calculator", {"latency_s": 0.2})
    start = time.perf_counter()
    env.step("42")  # no call: no latency
    assert time.perf_counter() - start < 0.2
    env.step("<calc>1+1</calc>")
    assert time.perf_counter() - start >= 0.2


@pytest.mark.parametrize("params", [{"open": ""}, {"observation_template": "no placeholder"}, {"latency_s": -1},
                                    {"demo_tool_rate": 2}, {"nope": 1}])
def test_bad_calculator_params_are_refused_at_start_up(params):
    with pytest.raises(ConfigError, match="env.name='calculator'"):
        load_config(None, ["env.name=calculator", f"env.params={params}", "warmup.target_accuracy=0"])


def test_demonstrations_use_the_tool_at_the_configured_rate_and_end_with_the_answer():
    env = make_env("calculator", {"demo_tool_rate": 0.3})
    demos = [env.demonstration(PROMPT, rng) for rng in [random.Random(0)] for _ in range(1000)]
    tool = [d for d in demos if len(d) == 3]
    assert 0.25 < len(tool) / len(demos) < 0.35  # binomial sd at n=1000: 0.015
    assert tool[0] == ["<calc>47*86</calc>", "4042", "4042"]
    assert all(d[-1] == "4042" for d in demos)


# ---- the Python tool ----

def test_the_python_tool_runs_code_in_the_sandbox_and_shows_its_output():
    env = make_env("python", {"wall_s": 5.0})
    obs, _, done, info = env.step("<python>print(sum(range(10)))</python>")
    assert (obs, done, info["ok"]) == ("45\n", False, True)
    obs, _, done, info = env.step("<python>print('a'); 1/0</python>")
    assert obs.startswith("a\nZeroDivisionError") and not info["ok"]
    obs, _, _, _ = env.step("<python>import socket; socket.create_connection(('1.1.1.1', 80))</python>")
    assert "Error" in obs or "blocked" in obs  # no network in the sandbox
    assert env.step("the answer is 45")[2] is True


def test_the_python_tool_cuts_long_output():
    env = make_env("python", {"max_output_chars": 20})
    obs, _, _, _ = env.step("<python>print('x' * 100)</python>")
    assert obs.startswith("x" * 20) and "characters cut" in obs


def test_bad_python_tool_limits_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="wall_s"):
        load_config(None, ["env.name=python", "env.params={wall_s: -1}", "warmup.target_accuracy=0"])


# ---- the registry and the protocol ----

@pytest.mark.parametrize(("spec", "match"), [("nope", "unknown environment 'nope'"),
                                             ("no_such_module:Env", "does not import"),
                                             ("env_fixtures:Missing", "has no attribute"),
                                             ("env_fixtures:time", "not a class with reset")])
def test_an_environment_that_cannot_be_found_is_refused_with_the_reason(spec, match):
    with pytest.raises(ValueError, match=match):
        get_env_class(spec)


def test_a_user_environment_is_named_by_import_path():
    assert get_env_class("env_fixtures:Scripted").__name__ == "Scripted"


@pytest.mark.parametrize(("value", "match"), [
    ("obs", "expected a tuple"), (("obs", 1.0, True), "expected a tuple"), ((1, None, True, {}), "observation"),
    (("o", float("nan"), False, {}), "reward"), (("o", "1", False, {}), "reward"), (("o", None, 1, {}), "done"),
    (("o", 10**400, False, {}), "reward"), (("\ud800", None, False, {}), "not valid Unicode"),
    (("o", None, False, {(1, 2): 3}), "not JSON-able"),
    (("o", None, False, []), "info")])
def test_a_step_out_of_protocol_is_an_env_error(value, match):
    with pytest.raises(EnvError, match=match):
        check_step(value)


def test_a_step_in_protocol_is_read_as_is():
    assert check_step(("o", 1, True, None)) == ("o", 1.0, True, {})
    assert check_reset(None) is None
    with pytest.raises(EnvError, match="reset"):
        check_reset(3)


def test_env_settings_without_an_environment_are_refused_as_inert():
    with pytest.raises(ConfigError, match="env.max_turns=2 has no effect"):
        load_config(None, ["env.max_turns=2"])


def test_a_warmup_accuracy_target_with_an_environment_is_refused():
    with pytest.raises(ConfigError, match="warmup.target_accuracy with env.name"):
        load_config(None, ["env.name=calculator"])  # the default config sets a target


# ---- observations between actions ----

@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return AutoTokenizer.from_pretrained(packaged_tokenizer("qwen2.5", tmp_path_factory.mktemp("qwen")))


def test_an_observation_is_rendered_as_the_template_renders_a_tool_turn(qwen):
    fmt = PromptFormat.of(qwen, TaskConfig())
    prompt_text = fmt.render(PROMPT)
    action = "<calc>47*86</calc>"
    after_stop = qwen.decode(fmt.observation_ids(PROMPT, "4042"))
    after_end = qwen.decode(fmt.observation_ids(PROMPT, "4042", written="<|im_end|>"))
    whole = qwen.apply_chat_template(
        [*fmt.messages(PROMPT), {"role": "assistant", "content": action}, {"role": "tool", "content": "4042"}],
        tokenize=False, add_generation_prompt=True)
    # prompt + action + observation ids are the template's rendering of the whole conversation, and a policy that
    # ended its turn itself (its end token) is not given a second one
    assert prompt_text + action + after_stop == whole
    assert "<|im_end|>" + after_end == after_stop and after_end.startswith("\n<|im_start|>tool\n4042")
    assert after_stop.endswith("<|im_start|>assistant\n")


def test_a_raw_prompt_gets_the_observation_text_as_it_is():
    tok = build_char_tokenizer()
    fmt = PromptFormat.raw(tok)
    assert fmt.observation_ids(PROMPT, "=84 ") == tok("=84 ", add_special_tokens=False)["input_ids"]
    assert fmt.render(PROMPT, "7") == "47*86=7"


def test_a_template_without_the_role_is_a_config_error_naming_the_setting():
    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
                         "{{ raise_exception('unknown role') }}{% endif %}{{ m.content }}{% endfor %}")
    fmt = PromptFormat.of(tok, TaskConfig(prompt_format="chat"))
    with pytest.raises(ConfigError, match="env.observation_role"):
        fmt.observation_ids(PROMPT, "42", role="tool")


def test_an_observation_role_the_policys_template_lacks_fails_before_ray_starts(tmp_path):
    """load_datasets (run before Ray and the warm-up) renders an observation turn once, so that the run fails in
    seconds rather than at its first tool call."""
    from conftest import tiny_overrides

    from rlsys.config import EXAMPLES, ModelConfig
    from rlsys.data.model import build_tiny_llama
    from rlsys.prepare import load_datasets

    tok = build_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
                         "{{ raise_exception('unknown role') }}{% endif %}{{ m.content }}{% endfor %}")
    policy = tmp_path / "policy"
    build_tiny_llama(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2), tok
                     ).save_pretrained(policy)
    tok.save_pretrained(policy)
    files = [EXAMPLES / "calculator.yaml"]
    chat = tiny_overrides(tmp_path, f"model.path={policy}", "task.prompt_format=chat")
    with pytest.raises(ConfigError, match="env.observation_role"):
        load_datasets(load_config(files, chat))
    assert load_datasets(load_config(files, [*chat, "env.observation_role=user"])).train_prompts


def test_a_demonstration_trains_on_its_actions_only():
    tok = build_char_tokenizer("0123456789*=[] ")
    fmt = PromptFormat.raw(tok)
    ids, mask = demonstration_ids(fmt, PROMPT, ["[47*86]", "=4042 ", "4042"])
    text = tok.decode(ids)
    assert text == "[47*86]=4042 4042<eos>"
    assert mask == [1] * 7 + [0] * 6 + [1] * 5
    with pytest.raises(ValueError, match="ends with an action"):
        demonstration_ids(fmt, PROMPT, ["[47*86]", "=4042 "])


# ---- stop strings on any tokenizer ----

def test_stop_strings_stop_a_character_level_tokenizer():
    """transformers' stop_strings fails on a word-level vocabulary; the text criterion needs only decode()."""
    import torch

    tok = build_char_tokenizer("0123456789*=[] ")
    ids = tok("12*3=[12*3]=36", add_special_tokens=False)["input_ids"]
    prompt = 5
    crit = StopOnText(("]",), tok, prompt)
    stops = [bool(crit(torch.tensor([ids[:n]]), None)[0]) for n in range(prompt + 1, len(ids) + 1)]
    assert stops.index(True) == len("[12*3]") - 1  # stops on the token that completes "]", not before
    end, reason = stop_position(torch.tensor(ids[prompt:]).numpy(), [tok.eos_token_id], ("]",), tok)
    assert (tok.decode(ids[prompt:prompt + end]), reason) == ("[12*3]", "]")


# ---- trajectory-scope rewards ----

def test_trajectory_rewards_read_the_turns_and_the_environments_rewards():
    trajectory = Trajectory((Turn("[1+1]", "=2 ", 0.25, False), Turn("[2+2]", "=4 ", None, False),
                             Turn("4", None, 0.5, True)))
    single = RewardItem("4", "4")  # a single completion: a trajectory of one turn, no tool call, no env reward
    terms = [RewardComponent(name="env", fn="env_reward", scope="trajectory"),
             RewardComponent(name="calls", fn="tool_calls", scope="trajectory", weight=-0.1),
             RewardComponent(name="exact", fn="addition_exact")]
    with RewardScorer(terms, timeout_s=5) as scorer:
        multi, one = scorer.score([RewardItem("4", "4", trajectory=trajectory), single])
    assert multi.components == {"env": 0.75, "calls": 2.0, "exact": 1.0}
    assert multi.reward == pytest.approx(0.75 - 0.2 + 1.0)
    assert one.components == {"env": 0.0, "calls": 0.0, "exact": 1.0}
    assert one.notes["env"] == "the environment gave no reward"


def test_a_trajectory_reward_in_another_scope_is_refused():
    with pytest.raises(ConfigError, match="trajectory-scope reward"):
        load_config(None, ["reward.components=[{name: e, fn: env_reward}]"])
