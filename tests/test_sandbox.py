"""Tests for the sandbox (rlsys.rewards.sandbox) and the code_tests reward (rlsys.rewards.code).

Real processes, no mocks. Hostile programs are run twice where it matters: through the reward with the default
sandbox (audit hook on: the reason names what was blocked), and through run_sandboxed with the audit hook off, to
check that the OS-level layers alone contain them. A hostile program whose containment depends on a layer runs
only after a harmless probe run has shown that layer in force on this machine (and the fork bomb is bounded even
so), so a machine without it skips the test instead of suffering it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from rlsys.rewards import RewardComponent, RewardScorer, Scored
from rlsys.rewards.code import code_tests, extract_code, parse_tests
from rlsys.rewards.registry import get_reward_fn
from rlsys.rewards.sandbox import SandboxLimits, run_sandboxed

ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 0", "assert add(10, -3) == 7"]
ADD_REF = json.dumps(ADD_TESTS)
GOOD = "Here is the function:\n```python\ndef add(a, b):\n    return a + b\n```\n"
FAST = {"wall_s": 5.0, "cpu_s": 2.0}  # reward params for hostile cases: fail fast
# A fork bomb, bounded: at most 10 000 forks in all (children sleep, they do not fork), so a containment failure
# cannot take the machine down.
FORK_BOMB = (
    "import os, time\n"
    "for _ in range(10000):\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(30)\n"
    "        os._exit(0)\n"
)
EXTERNAL = ("192.0.2.1", 80)  # TEST-NET-1 (RFC 5737): reserved for documentation, routed nowhere


@pytest.fixture(autouse=True)
def sandbox_tmp(monkeypatch):
    """Every sandbox directory of a test goes under a fresh directory; afterwards it must be empty, and no process
    may mention it (in its command line or environment: the sandbox's HOME and TMPDIR)."""
    base = tempfile.mkdtemp(prefix="rlsys-sandbox-test-", dir="/tmp")
    os.chmod(base, 0o755)  # reachable for the unprivileged uid a root sandbox drops to
    monkeypatch.setattr(tempfile, "tempdir", base)
    monkeypatch.setenv("TMPDIR", base)  # for the scorer's child process
    yield base
    try:
        assert os.listdir(base) == [], "a sandbox directory was left behind"
        assert _wait_no_processes(base) == [], "a sandbox process was left running"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _processes_mentioning(base: str) -> list[int]:
    """Processes whose command line mentions ``base`` (the harness and its forks run a script in there) or whose
    HOME is under it (anything the sandbox executed)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        for part, needle in (("cmdline", base.encode()), ("environ", b"HOME=" + base.encode())):
            try:
                with open(f"/proc/{name}/{part}", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
                        break
            except OSError:
                pass
    return found


def _wait_no_processes(needle: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_mentioning(needle)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _score(completion: str, reference: str = ADD_REF, **params) -> Scored:
    result = code_tests(completion, reference, **params)
    assert isinstance(result, Scored)
    return result


def _assert_still_works(base: str) -> None:
    """After a hostile run: a normal program scores 1.0, and nothing of the sandbox is left."""
    assert _score(GOOD) == (1.0, "4/4 tests passed")
    assert os.listdir(base) == []
    assert _wait_no_processes(base) == []


def _probe(**limits) -> tuple[str, ...]:
    """The isolation layers a harmless run gets on this machine with these limits."""
    result = run_sandboxed("pass", SandboxLimits(**limits))
    assert result.ok, result.reason
    return result.isolation


def _require(layers: tuple[str, ...], *needed: str) -> None:
    missing = [n for n in needed if n not in layers]
    if missing:
        pytest.skip(f"this machine does not give the sandbox {', '.join(missing)} (has: {', '.join(layers)})")


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1, and a function telling whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)

    def connected() -> bool:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            return False
        conn.close()
        return True

    yield server.getsockname()[1], connected
    server.close()


# ---- the reward: registration, extraction, reference format ----


def test_registered_by_name():
    assert get_reward_fn("code_tests") is code_tests


def test_extract_code():
    assert extract_code("```python\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2"
    assert extract_code("```py\na = 1\n```\n```\nb = 2\n```") == "a = 1"  # a python block beats a plain one
    assert extract_code("```\nb = 2\n```\n```bash\nls\n```") == "b = 2"
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1\n"  # no fence: all of it
    assert extract_code("```bash\nls\n```") == "```bash\nls\n```"  # no python or plain block: all of it
    assert extract_code("text\n  ```python\nx = 1\n  ```\n") == "x = 1"  # indented fences
    assert extract_code("```python\nx = 1\ny = (") == "x = 1\ny = ("  # unclosed (truncated): to the end
    start = time.perf_counter()
    extract_code("```\n" * 500_000)
    assert time.perf_counter() - start < 2.0


def test_correct_solution_scores_one():
    assert _score(GOOD) == (1.0, "4/4 tests passed")
    assert _score("def add(a, b):\n    return a + b\n") == (1.0, "4/4 tests passed")  # no fence


def test_partial_credit_is_the_fraction_passed():
    value, reason = _score("```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```")
    assert value == 0.5
    assert reason == "2/4 tests passed; test 1 failed: AssertionError (line 1)"


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_a_raising_or_hanging_test_does_not_stop_the_others():
    reference = json.dumps([
        "assert add(1, 2) == 3",
        "add(1, 0) / 0",  # raises
        "while add(1, 1):\n    pass",  # hangs: stopped by test_timeout_s
        "x = 1\nassert add(x, 1) == 2",
        "assert 'x' not in dir()",  # the previous test's names do not leak into this one
    ])
    value, reason = _score(GOOD, reference, test_timeout_s=0.5)
    assert value == 3 / 5
    assert reason.startswith("3/5 tests passed; test 1 failed: ZeroDivisionError: division by zero (line 1)")
    result = run_sandboxed("def add(a, b):\n    return a + b", SandboxLimits(test_timeout_s=0.5),
                           tests=json.loads(reference))
    assert [t.passed for t in result.tests] == [True, False, False, True, True]
    assert result.tests[2].error.startswith("TestTimeout: the test took longer than 0.5 s")


def test_main_guard_does_not_run_before_the_tests():
    completion = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    assert _score(completion) == (1.0, "4/4 tests passed")


@pytest.mark.parametrize(("completion", "reason_part"), [
    ("", "empty"),
    ("   \n\t\n", "empty"),
    ("```python\n```", "empty"),
    ("x" * 5_000_000, "too long: 5000000 characters"),
    ("def add(a, b):\x00\n    return a + b", "NUL bytes"),
    ("def add(a, b):\n    return a + b  # \udcff\udcfe", "not valid UTF-8"),
    ("\udcc3\udca9t\udcc3\udca9", "not valid UTF-8"),
    ("def add(a, b):\n    return (a + b\n", "SyntaxError: '(' was never closed (line 2)"),
    ("def add(a, b):\n    return [a + b}\n", "SyntaxError: closing parenthesis '}' does not match"),
    ("def add(a, b) {\n    return a + b;\n}", "SyntaxError"),
    ("ï»¿def add(a, b): return a + b", "SyntaxError: invalid character"),  # mojibake of a UTF-8 BOM
    ("d\ufffdf add(a, b): return a + b", "SyntaxError"),
    ("I would add the two numbers together and return the sum.", "SyntaxError"),
    ("def add(a, b):\n    retur a + b", "SyntaxError"),
    ("```python\ndef add(a, b):\n    return str(a + b)\n```", "0/4 tests passed; test 0 failed: AssertionError"),
    ("def sub(a, b):\n    return a - b", "NameError: name 'add' is not defined (line 1)"),
    ("raise ValueError('nope')", "the program raised ValueError: nope (line 1)"),
    ("import sys\ndef add(a, b):\n    return a + b\nsys.exit(0)", "exited before its tests ran (SystemExit(0))"),
    ("import os\ndef add(a, b):\n    return a + b\nos._exit(0)", "ended before the program finished"),
    ("import nonexistent_module_xyz", "ModuleNotFoundError"),
])
def test_malformed_or_wrong_completions_score_zero_with_a_reason(completion, reason_part):
    value, reason = _score(completion)
    assert value == 0.0
    assert reason_part in reason


@pytest.mark.parametrize(("reference", "match"), [
    ("assert add(1, 2) == 3", "JSON list of test snippets"),
    ('{"tests": ["assert True"]}', "got a JSON dict"),
    ("[]", "empty"),
    ("[1]", "test 0 .* non-empty string"),
    ('["assert True", "  "]', "test 1 .* non-empty string"),
    ('["assert True", "assert (1"]', "test 1 of the reference is not valid Python"),
    ("", "JSON list"),
])
def test_malformed_reference_raises(reference, match):
    with pytest.raises(ValueError, match=match):
        code_tests(GOOD, reference)
    with pytest.raises(ValueError, match=match):
        parse_tests(reference)


@pytest.mark.parametrize("params", [{"wall_s": 0}, {"cpu_s": -1}, {"memory_mb": "512"}, {"max_processes": 0},
                                    {"test_timeout_s": float("nan")}, {"max_code_chars": 0}])
def test_bad_params_raise(params):
    with pytest.raises(ValueError):
        code_tests(GOOD, ADD_REF, **params)


# ---- forging a pass ----


@pytest.mark.parametrize("trick", [
    # Printing what a pass might look like, on stdout and on every file descriptor.
    "print('4/4 tests passed')\nprint('test 0 1 1')\n"
    "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32 + b' test 30 31 \\n')\n"
    "    except OSError:\n        pass\n",
    # Patching os.write to flip the harness's "failed" into "passed" on its way out.
    "import os\n_write = os.write\nos.write = lambda fd, data: _write(fd, data.replace(b' 30 ', b' 31 '))\n",
    # Patching builtins the tests use.
    "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\nbuiltins.abs = lambda x: 0\n",
    # Reading the harness's locals (the nonce) through frames, directly or through the standard library.
    "import sys\nnonce = sys._getframe(1).f_locals\n",
    "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    frame = e.__traceback__.tb_frame.f_back\n",
    "import inspect\nframes = inspect.stack()\n",
    "import traceback\nframes = list(traceback.walk_stack(None))\n",
    "import logging\nframe = logging.currentframe()\n",
    "def gen():\n    yield 1\nframe = gen().gi_frame\n",
    # Exiting with success before the tests run.
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
])
def test_a_wrong_solution_cannot_forge_a_pass(trick):
    completion = "def add(a, b):\n    return 'wrong'\n" + trick
    value, reason = _score(completion)
    assert value == 0.0
    assert "0/4 tests passed" in reason


# ---- hostile code, through the reward (default sandbox, audit hook on) ----


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_infinite_loop_is_killed_at_the_cpu_limit(sandbox_tmp):
    start = time.monotonic()
    value, reason = _score("```python\nwhile True:\n    pass\n```", cpu_s=1, wall_s=10)
    assert (value, reason) == (0.0, "killed: CPU time limit 1 s exceeded (0/4 tests passed)")
    assert time.monotonic() - start < 8
    _assert_still_works(sandbox_tmp)


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_sleeping_forever_is_killed_at_the_wall_time_limit(sandbox_tmp):
    start = time.monotonic()
    value, reason = _score("import time\ntime.sleep(600)", wall_s=1)
    assert (value, reason) == (0.0, "killed: wall time limit 1 s exceeded (0/4 tests passed)")
    assert time.monotonic() - start < 8
    _assert_still_works(sandbox_tmp)


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_a_hanging_function_under_test_is_stopped(sandbox_tmp):
    value, reason = _score("def add(a, b):\n    while True:\n        pass\n", test_timeout_s=0.3, cpu_s=10)
    assert value == 0.0
    assert "test 0 failed: TestTimeout" in reason or "killed" in reason


def test_fork_bomb(sandbox_tmp):
    _require(_probe(), "nproc")  # never run a fork bomb where the process limit is not in force
    value, reason = _score(FORK_BOMB, **FAST)
    assert value == 0.0
    assert "blocked by the sandbox: starting a process (os.fork)" in reason
    _assert_still_works(sandbox_tmp)


@pytest.mark.parametrize("program", [
    "x = bytearray(64 * 1024 ** 3)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))",
    "x = '9' * (2 ** 40)",
])
def test_memory_blow_up(sandbox_tmp, program):
    value, reason = _score(program, **FAST)
    assert value == 0.0
    assert reason.startswith("memory limit 512 MB exceeded: MemoryError")
    _assert_still_works(sandbox_tmp)


def test_opening_a_socket(sandbox_tmp, listener):
    port, connected = listener
    for target in (("127.0.0.1", port), EXTERNAL):
        program = f"import socket\nsocket.create_connection({target!r}, timeout=2)"
        value, reason = _score(program, **FAST)
        assert value == 0.0
        assert "blocked by the sandbox: network access" in reason
    value, reason = _score("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:%d/', timeout=2)" % port,
                           **FAST)
    assert value == 0.0 and "network access" in reason
    assert not connected()
    _assert_still_works(sandbox_tmp)


def test_writing_outside_its_directory(sandbox_tmp):
    shared = tempfile.mkdtemp(prefix="rlsys-sandbox-outside-", dir="/tmp")
    os.chmod(shared, 0o777)  # world-writable, like /tmp: a uid drop alone would not stop the write
    targets = [os.path.join(shared, "pwned.txt"), f"/tmp/rlsys-sandbox-pwned-{os.getpid()}.txt",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "pwned.txt")]
    try:
        for target in targets:
            value, reason = _score(f"open({target!r}, 'w').write('pwned')", **FAST)
            assert value == 0.0
            assert "blocked by the sandbox: writing outside the sandbox directory" in reason
            assert not os.path.exists(target)
        value, reason = _score(f"import os, shutil\nshutil.rmtree({shared!r})", **FAST)
        assert value == 0.0 and os.path.isdir(shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        for target in targets:
            if os.path.exists(target):
                os.remove(target)
    _assert_still_works(sandbox_tmp)


def test_killing_its_parent(sandbox_tmp):
    program = (
        "import os, signal\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
        "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n"
        f"os.kill({os.getpid()}, signal.SIGKILL)\n"
    )
    value, reason = _score(program, **FAST)
    assert value == 0.0
    assert "blocked by the sandbox: sending a signal (os.kill)" in reason
    _assert_still_works(sandbox_tmp)  # and this process is still here to check


def test_ctypes_and_subprocess_are_blocked(sandbox_tmp):
    value, reason = _score("import ctypes\nctypes.CDLL(None).kill(1, 9)", **FAST)
    assert value == 0.0 and "importing ctypes" in reason
    value, reason = _score("import subprocess\nsubprocess.run(['true'])", **FAST)
    assert value == 0.0 and "blocked by the sandbox" in reason
    value, reason = _score("import os\nos.system('true')", **FAST)
    assert value == 0.0 and "running a shell command (os.system)" in reason


def test_standard_library_and_numpy_still_work(sandbox_tmp):
    program = (
        "import collections, dataclasses, enum, json, logging, pathlib, re, tempfile, threading, traceback\n"
        "P = collections.namedtuple('P', 'a b')\n"
        "pathlib.Path('notes.txt').write_text('kept in the sandbox directory')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n"
        "    f.write('x')\n"
        "t = threading.Thread(target=print, args=('thread',))\n"
        "t.start(); t.join()\n"
        "import asyncio\n"
        "async def three():\n    return 3\n"
        "assert asyncio.run(three()) == 3\n"
        "logging.getLogger('solution').warning('logging works')\n"
        "traceback.extract_stack()\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    last = traceback.format_exc().splitlines()[-1]\n"
        "def add(a, b):\n    return P(a, b).a + P(a, b).b\n"
    )
    assert _score(program) == (1.0, "4/4 tests passed")
    numpy = pytest.importorskip("numpy")
    del numpy
    assert _score("import numpy as np\ndef add(a, b):\n    return int(np.add(a, b))\n") == (1.0, "4/4 tests passed")


# ---- hostile code against the OS-level layers alone (audit hook off) ----


def _bare(**overrides) -> SandboxLimits:
    return SandboxLimits(**{"wall_s": 5.0, "cpu_s": 2.0, "audit_hook": False, **overrides})


def test_os_layers_contain_a_fork_bomb(sandbox_tmp):
    _require(_probe(audit_hook=False, max_processes=16), "nproc")
    result = run_sandboxed(FORK_BOMB, _bare(max_processes=16))
    assert result.killed_by == "processes", result.reason
    assert result.reason.startswith("process limit (16) reached: BlockingIOError")
    _assert_still_works(sandbox_tmp)


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_os_layers_contain_cpu_wall_and_memory(sandbox_tmp):
    result = run_sandboxed("while True:\n    pass", _bare(cpu_s=1))
    assert (result.killed_by, result.signal, result.reason) == ("cpu_time", "SIGKILL",
                                                                "killed: CPU time limit 1 s exceeded")
    result = run_sandboxed("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)",
                           _bare(wall_s=1))
    assert (result.killed_by, result.timed_out) == ("wall_time", True)
    assert 1.0 <= result.wall_s < 4
    result = run_sandboxed("x = bytearray(1024 ** 3)", _bare(memory_mb=256))
    assert result.killed_by == "memory", result.reason
    _assert_still_works(sandbox_tmp)


def test_os_layers_block_the_network(sandbox_tmp, listener):
    _require(_probe(audit_hook=False), "netns")
    port, connected = listener
    for target in (("127.0.0.1", port), EXTERNAL):
        result = run_sandboxed(f"import socket\nsocket.create_connection({target!r}, timeout=2)", _bare())
        assert result.error is not None and "Network is unreachable" in result.error, result.reason
    assert not connected()
    _assert_still_works(sandbox_tmp)


def test_os_layers_block_writes_outside(sandbox_tmp):
    _require(_probe(audit_hook=False), "fs_readonly", "tmpfs")
    shared = tempfile.mkdtemp(prefix="rlsys-sandbox-outside-", dir="/tmp")
    os.chmod(shared, 0o777)
    target = os.path.join(shared, "pwned.txt")
    try:
        result = run_sandboxed(f"open({target!r}, 'w').write('pwned')", _bare())
        assert result.error is not None and "Read-only file system" in result.error, result.reason
        assert not os.path.exists(target)
        result = run_sandboxed("open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())", _bare())
        assert result.ok and result.stdout == "ok\n"
        result = run_sandboxed("open('big', 'wb').write(b'x' * 8 * 1024 * 1024)", _bare(disk_mb=4))
        assert result.killed_by == "file_size", result.reason
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    _assert_still_works(sandbox_tmp)


def test_os_layers_protect_the_parent(sandbox_tmp):
    layers = _probe(audit_hook=False)
    if "pidns" not in layers and "uid_drop" not in layers:
        pytest.skip(f"no PID namespace and no uid drop here (has: {', '.join(layers)}): only the hook protects")
    program = (
        "import os, signal\n"
        "for pid in (os.getppid(), %d):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "try:\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nexcept OSError:\n    pass\n"
    ) % os.getpid()
    if "pidns" in layers:  # kill(-1) signals every process it may: only its own namespace's
        program += "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
    run_sandboxed(program, _bare())
    assert run_sandboxed("print('still here')", _bare()).stdout == "still here\n"
    _assert_still_works(sandbox_tmp)


def test_no_process_survives_the_sandbox(sandbox_tmp):
    layers = _probe(audit_hook=False)
    _require(layers, "nproc")
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
    )
    if "pidns" in layers:  # a child that leaves the process group: only the PID namespace catches it
        program += "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
    program += "print('parent done', flush=True)\ntime.sleep(60)\n"
    result = run_sandboxed(program, _bare(wall_s=1))
    assert result.timed_out and result.stdout == "parent done\n"
    assert not os.path.exists(result.workdir)
    assert _wait_no_processes(sandbox_tmp) == []


def test_the_sandbox_dies_with_its_caller(sandbox_tmp):
    """A caller killed mid-run (a reward worker killed for a timeout) takes its sandbox along, so a program that
    sleeps forever is not left behind with no one to enforce its wall time."""
    driver = (
        "import sys, tempfile\n"
        f"tempfile.tempdir = {sandbox_tmp!r}\n"
        "from rlsys.rewards.sandbox import SandboxLimits, run_sandboxed\n"
        "run_sandboxed('print(\"started\", flush=True)\\nimport time\\ntime.sleep(600)', SandboxLimits(wall_s=600))\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.monotonic() + 30
        while not _processes_mentioning(sandbox_tmp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_mentioning(sandbox_tmp), "the sandbox did not start"
        time.sleep(0.3)
    finally:
        caller.kill()
        caller.wait()
    assert _wait_no_processes(sandbox_tmp) == []
    for leftover in os.listdir(sandbox_tmp):  # the caller had no chance to remove its directory: we do
        shutil.rmtree(os.path.join(sandbox_tmp, leftover))


def test_isolation_layers_reported(sandbox_tmp):
    result = run_sandboxed("import os\nprint(os.getuid(), os.getcwd() == os.environ['HOME'])")
    assert result.ok, result.reason
    assert {"session", "rlimits", "nproc", "no_new_privs", "audit_hook"} <= set(result.isolation)
    assert result.stdout.split()[1] == "True"
    if os.geteuid() == 0:
        assert "uid_drop" in result.isolation
        assert result.stdout.split()[0] == str(SandboxLimits().uid)
    assert not os.path.exists(result.workdir)


def test_output_is_truncated(sandbox_tmp):
    result = run_sandboxed("import sys\nsys.stdout.write('x' * 100000)\nsys.stderr.write('y' * 100000)",
                           SandboxLimits(max_output_bytes=1000))
    assert result.ok
    assert result.stdout == "x" * 1000 and result.stdout_truncated
    assert result.stderr == "y" * 1000 and result.stderr_truncated


# ---- as a user other than root ----


def _python_for(uid: int) -> str | None:
    """An interpreter that ``uid`` can run, or None."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            done = subprocess.run([candidate, "-I", "-c", "import json, selectors, secrets"], user=uid, group=uid,
                                  extra_groups=[], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="already not root: every other test here runs the non-root path")
@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_as_a_non_root_user():
    """The non-root path (user namespace, or the relative process limit without one), driven by a copy of the
    sandbox module run as uid 65534."""
    uid = 65534
    python = _python_for(uid)
    if python is None:
        pytest.skip("no Python interpreter here that uid 65534 may run")
    from rlsys.rewards import sandbox

    work = tempfile.mkdtemp(prefix="rlsys-sandbox-nonroot-", dir="/tmp")
    os.chmod(work, 0o755)
    shutil.copy(sandbox.__file__, os.path.join(work, "sandbox_copy.py"))
    os.chmod(os.path.join(work, "sandbox_copy.py"), 0o644)
    work_tmp = os.path.join(work, "tmp")  # the sandboxes' parent directory, which uid 65534 can write to
    os.mkdir(work_tmp)
    os.chown(work_tmp, uid, uid)
    driver = f"""
import json, os, sys
sys.path.insert(0, {work!r})
import tempfile
tempfile.tempdir = {work_tmp!r}
from sandbox_copy import run_sandboxed, SandboxLimits
out = {{}}
def run(name, program, **limits):
    r = run_sandboxed(program, SandboxLimits(**{{"wall_s": 5.0, "cpu_s": 2.0, **limits}}))
    out[name] = {{"reason": r.reason, "killed_by": r.killed_by, "isolation": r.isolation, "error": r.error,
                  "stdout": r.stdout, "gone": not os.path.exists(r.workdir)}}
run("probe", "import os\\nprint(os.getuid())", audit_hook=False, max_processes=16)
if "nproc" in out["probe"]["isolation"]:
    run("fork_bomb", {FORK_BOMB!r}, audit_hook=False, max_processes=16)
run("kill_parent", "import os, signal\\nos.kill(os.getppid(), signal.SIGKILL)")
run("write", "open({os.path.join(work, 'pwned.txt')!r}, 'w').write('x')")
run("socket", "import socket\\nsocket.create_connection(('127.0.0.1', 9), timeout=2)")
run("cpu", "while True:\\n    pass", cpu_s=1)
run("after", "print('ok')")
print(json.dumps(out))
"""
    try:
        done = subprocess.run([python, "-I", "-c", driver], user=uid, group=uid, extra_groups=[],
                              capture_output=True, text=True, timeout=120, cwd=work)
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["probe"]["stdout"] == f"{uid}\n"
        assert "uid_drop" not in out["probe"]["isolation"] and "nproc" in out["probe"]["isolation"]
        assert out["fork_bomb"]["killed_by"] == "processes", out["fork_bomb"]
        assert "sending a signal" in out["kill_parent"]["reason"]
        assert "writing outside" in out["write"]["reason"]
        assert not os.path.exists(os.path.join(work, "pwned.txt"))
        assert "network access" in out["socket"]["reason"]
        assert out["cpu"]["killed_by"] == "cpu_time"
        assert out["after"]["stdout"] == "ok\n"
        assert all(r["gone"] for r in out.values())
        assert os.listdir(work_tmp) == []
        assert _wait_no_processes(work_tmp) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- through the real scorer (a spawned child process) ----


@pytest.mark.slow  # waits on real timeouts or child processes (seconds)
def test_through_the_reward_scorer(sandbox_tmp):
    term = RewardComponent(name="code_tests", fn="code_tests", params={"cpu_s": 1, "wall_s": 3})
    hostile = [
        "```python\nwhile True:\n    pass\n```",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return a + b",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
    ]
    items = [(GOOD, ADD_REF), (hostile[0], ADD_REF), ("def add(a, b):\n    return abs(a) + abs(b)", ADD_REF),
             (hostile[1], ADD_REF), (hostile[2], ADD_REF), (GOOD, ADD_REF)]
    with RewardScorer([term], timeout_s=30) as scorer:
        outcomes = scorer.score(items)
    assert [o.failed for o in outcomes] == [False] * len(items)
    assert [o.reward for o in outcomes] == [1.0, 0.0, 0.5, 0.0, 0.0, 1.0]
    notes = [o.notes["code_tests"] for o in outcomes]
    assert notes[0] == notes[5] == "4/4 tests passed"
    assert notes[1] == "killed: CPU time limit 1 s exceeded (0/4 tests passed)"
    assert notes[2].startswith("2/4 tests passed; test 1 failed")
    assert "sending a signal" in notes[3]
    assert "network access" in notes[4]


def test_sandbox_limits_validate():
    with pytest.raises(ValueError, match="wall_s"):
        SandboxLimits(wall_s=float("inf"))
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1)
    with pytest.raises(ValueError, match="uid"):
        SandboxLimits(uid=0)
    assert SandboxLimits(test_timeout_s=None).test_timeout_s is None


def test_sandbox_directory_is_private(sandbox_tmp):
    result = run_sandboxed("import os, stat\nprint(oct(stat.S_IMODE(os.stat('.').st_mode)))")
    assert result.ok and result.stdout == "0o700\n"
    assert stat.S_IMODE(os.stat(sandbox_tmp).st_mode) == 0o755
    signal.getsignal(signal.SIGINT)  # the test process is untouched
