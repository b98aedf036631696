"""Run untrusted Python code in a sandboxed child process, with resource limits and OS-level isolation.

:func:`run_sandboxed` starts ``python -I -B harness.py`` in a fresh temporary directory (removed afterwards, also
on timeout or kill), gives it the program (and optionally unit tests) on stdin, and waits at most ``wall_s``
seconds. The harness is two processes: an *outer* one that sets up Linux namespaces and reports the exit status,
and an *inner* one that applies the limits, drops privileges and runs the program -- then, if tests were given,
each test snippet in its own ``try``, so one failing test does not stop the others. Results come back on a pipe,
tagged with a random nonce the program is never given. Afterwards the whole sandbox is SIGKILLed (its PID
namespace, or its process group) and its directory removed; if the caller dies mid-run, the sandbox dies with
it (parent-death signals).

Isolation layers, each applied where the kernel and our privileges allow it, and listed in
:attr:`SandboxResult.isolation` (so a caller, or a test, can check what was really in force):

- ``session``      its own session and process group; the whole group is killed afterwards.
- ``rlimits``      RLIMIT_CPU (``cpu_s``, a SIGKILL at the limit), RLIMIT_AS (``memory_mb``), RLIMIT_FSIZE,
  RLIMIT_NOFILE, no core files.
- ``nproc``        RLIMIT_NPROC in force for the sandbox: as root, after dropping to an unprivileged uid (root is
  exempt from RLIMIT_NPROC), counted on top of the processes that uid already has; as another user, in its own
  user namespace (the kernel counts processes per user namespace, so the user's other processes do not count),
  or else on top of that user's current process count.
- ``uid_drop``     as root: setgroups([]) + setgid + setuid to ``uid`` (65534, "nobody", by default). An
  interpreter under a directory that uid cannot enter (say /root/.pyenv) is bind-mounted back into an empty
  tmpfs over that directory, which also hides the rest of it (this needs the mount namespace: without one,
  such an interpreter can import only the modules the harness has already loaded).
- ``userns``       as another user: an unprivileged user namespace, which lets it create the namespaces below;
  every capability is dropped again before the program runs (``caps_dropped``).
- ``netns``        a new network namespace: no interface but a loopback that is down, so no network at all.
- ``pidns``        a new PID namespace: the program sees only its own processes (``procfs``: a /proc of its own),
  cannot signal anything outside, and all of it dies with the sandbox's init process.
- ``ipcns``        its own System V IPC and POSIX message queues.
- ``mountns``, ``fs_readonly``  a private mount namespace with every mount read-only, except
- ``tmpfs``        the sandbox directory, a size-limited tmpfs (``disk_mb``), gone when the sandbox ends.
- ``no_new_privs`` setuid binaries cannot raise privileges.
- ``audit_hook``   defence in depth inside the interpreter (``sys.addaudithook``): blocks network sockets,
  starting or signalling processes, ctypes (except while a trusted module such as numpy imports it), writes
  outside the sandbox directory, and frame and heap introspection from the program's own code (which could read
  the harness's nonce), with a PermissionError that says what was blocked. The OS-level layers above are the
  real guarantee; the hook makes the reason readable, and covers what they cannot where they are unavailable.

As root everything above applies. As another user it depends on unprivileged user namespaces: without them only
``session``, ``rlimits``, ``nproc`` (relative), ``no_new_privs`` and ``audit_hook`` remain, the program runs as the
calling user, and the hook is all that keeps it from that user's other processes and files.

Limits of the design: the program shares its interpreter with the harness that reports the tests, so the nonce
and the audit hook stop printed or written fake results and the easy ways to the harness's state, not a program
crafted against this file; and nothing here can stop code that games the tests' own assertions (an object equal
to everything). Pure Python (standard library only), no Ray. Linux only.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Limit names for SandboxResult.killed_by.
WALL_TIME, CPU_TIME, MEMORY, PROCESSES, FILE_SIZE = "wall_time", "cpu_time", "memory", "processes", "file_size"

_CTL_LIMIT = 1 << 20  # bytes kept from the control pipe (the program can write junk to it too)
_DRAIN_S = 1.0  # after the sandbox exits, how long to wait for the last output
_INNER_EXIT_S = 5.0  # after the kill, how long to wait for the sandbox's processes to be gone


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run. Every field has a default, so ``SandboxLimits()`` is a sane sandbox.

    ``wall_s`` is counted from when the program starts (after the interpreter has started and the sandbox is set
    up, which ``startup_timeout_s`` bounds separately, generously, for loaded machines). ``cpu_s`` is CPU time of
    the sandbox's main process (whole seconds, rounded up; each child process has the same limit of its own).
    ``memory_mb`` is address space (RLIMIT_AS): a Python interpreter needs ~30 MB of it before the program
    allocates anything, and each thread reserves 8 MB of stack. ``max_processes`` counts processes and threads,
    the sandbox's own interpreter included. ``max_output_bytes`` applies to stdout and stderr each (the rest is
    read and dropped). ``test_timeout_s`` bounds each test snippet (a SIGALRM in the sandbox; None: no per-test
    bound). ``uid`` is the unprivileged uid a root caller drops to. ``namespaces=False`` and ``audit_hook=False``
    switch those layers off (to test the fallbacks, or the OS layers alone).
    """

    wall_s: float = 10.0
    cpu_s: float = 5.0
    memory_mb: int = 512
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_file_mb: int = 16
    disk_mb: int = 64
    max_open_files: int = 256
    test_timeout_s: float | None = 3.0
    uid: int = 65534
    namespaces: bool = True
    audit_hook: bool = True
    startup_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "startup_timeout_s", "test_timeout_s"):
            value = getattr(self, name)
            if value is None and name == "test_timeout_s":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                       and value > 0):
                raise ValueError(f"SandboxLimits: {name} must be a finite number of seconds > 0, got {value!r}")
        minimums = {"memory_mb": 64, "max_processes": 1, "max_output_bytes": 0, "max_file_mb": 1, "disk_mb": 1,
                    "max_open_files": 16, "uid": 1}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"SandboxLimits: {name} must be an int >= {minimum}, got {value!r}")
        for name in ("namespaces", "audit_hook"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SandboxLimits: {name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TestOutcome:
    """One test snippet's result. ``error``: why it failed, e.g. ``"AssertionError (line 1)"``."""

    passed: bool
    error: str = ""


@dataclass(frozen=True)
class SandboxResult:
    """What happened in one sandboxed run.

    ``exit_code`` is None when a signal ended the program (``signal`` names it) or the status is unknown.
    ``killed_by`` names the limit that stopped the program: ``"wall_time"``, ``"cpu_time"`` (killed),
    ``"memory"`` (a MemoryError, or killed out of memory), ``"processes"`` (a fork failed at the process limit),
    ``"file_size"`` (a write failed at the file-size or disk limit); None otherwise. ``error`` is the program's
    uncaught exception as ``"Type: message (line N)"`` and ``error_kind`` classifies it (``syntax``, ``memory``,
    ``processes``, ``file_size``, ``blocked`` -- by the audit hook --, ``exit`` -- SystemExit --, ``error``).
    ``reason`` is one human-readable line. ``sandbox_error`` is true when the sandbox itself failed (could not
    start or set up): then the program's fate says nothing about the program. ``tests`` has one entry per test
    given (tests that never ran -- the program failed, or was killed first -- are failed with the reason).
    ``workdir`` is the sandbox's temporary directory, which no longer exists when this is returned.
    """

    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_by: str | None
    reason: str
    isolation: tuple[str, ...]
    error: str | None = None
    error_kind: str | None = None
    tests: tuple[TestOutcome, ...] = ()
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    sandbox_error: bool = False
    wall_s: float = 0.0
    cpu_s: float | None = None
    workdir: str = ""

    @property
    def ok(self) -> bool:
        """The program ran to the end without an exception, exit status or signal."""
        return self.exit_code == 0 and self.error is None and not self.sandbox_error

    @property
    def tests_passed(self) -> int:
        return sum(t.passed for t in self.tests)


def run_sandboxed(program: str, limits: SandboxLimits | None = None, *, tests: Sequence[str] = ()) -> SandboxResult:
    """Run ``program`` (Python source) in a sandbox with ``limits``; if ``tests`` (Python snippets) are given, run
    each after the program, in a copy of the program's namespace, and report each one's outcome.

    The program runs as a module named ``"__main__"`` when there are no tests, and ``"solution"`` when there are
    (so an ``if __name__ == "__main__":`` demo in a solution does not run before its tests). Tests report on a
    channel tagged with a random nonce the program is never given, so printing a fake "pass" forges nothing.
    Never raises because of the program; raises ValueError for a bad argument and OSError if the sandbox cannot
    be created at all (no temporary directory, no interpreter).
    """
    limits = limits if limits is not None else SandboxLimits()
    if not isinstance(program, str):
        raise ValueError(f"run_sandboxed: program must be a str, got {type(program).__name__}")
    tests = tuple(tests)
    if not all(isinstance(t, str) for t in tests):
        raise ValueError("run_sandboxed: every test must be a str of Python source")
    return _Run(program, limits, tests).execute()


# ---------------------------------------------------------------------------------------------------------------
# The host side: start the harness, feed it, watch it, kill it, clean up.


class _Capture:
    """Bytes read from one pipe, keeping at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.eof = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        self.data += chunk


class _Run:
    """One sandboxed run, from creating the directory to removing it."""

    def __init__(self, program: str, limits: SandboxLimits, tests: tuple[str, ...]) -> None:
        self.program = program
        self.limits = limits
        self.tests = tests
        self.nonce = secrets.token_hex(16)
        self.stdout = _Capture(limits.max_output_bytes)
        self.stderr = _Capture(limits.max_output_bytes)
        self.control = _Capture(_CTL_LIMIT)
        self.parsed = 0  # bytes of self.control already split into lines
        self.lines: list[list[str]] = []  # control lines that carry our nonce, decoded
        self.inner_pid: int | None = None
        self.inner_pidfd: int | None = None
        self.ready_at: float | None = None

    def execute(self) -> SandboxResult:
        limits = self.limits
        workdir = tempfile.mkdtemp(prefix="rlsys-sandbox-")
        proc: subprocess.Popen | None = None
        ctl_r = ctl_w = outer_pidfd = -1
        started = time.monotonic()
        timed_out = startup_failed = False
        try:
            harness = os.path.join(workdir, "harness.py")
            with open(harness, "w", encoding="utf-8") as f:
                f.write(_HARNESS)
            os.chmod(harness, 0o644)
            os.chmod(workdir, 0o700)
            if os.geteuid() == 0:  # without a mount namespace the program works in this very directory, as uid
                os.chown(workdir, limits.uid, limits.uid)
            ctl_r, ctl_w = os.pipe()
            payload = json.dumps({
                "nonce": self.nonce, "ctl_fd": ctl_w, "host_pid": os.getpid(), "workdir": workdir,
                "program": self.program,
                "tests": list(self.tests), "cpu_s": _cpu_limit(limits), "memory_mb": limits.memory_mb,
                "max_processes": limits.max_processes, "max_file_mb": limits.max_file_mb, "disk_mb": limits.disk_mb,
                "max_open_files": limits.max_open_files, "test_timeout_s": limits.test_timeout_s, "uid": limits.uid,
                "namespaces": limits.namespaces, "audit_hook": limits.audit_hook,
            }).encode()
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8"}
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", harness], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(ctl_w,), cwd=workdir, env=env, start_new_session=True,
            )
            os.close(ctl_w)
            ctl_w = -1
            try:
                outer_pidfd = os.pidfd_open(proc.pid)
            except (AttributeError, OSError):  # Linux < 5.3: poll instead
                outer_pidfd = -1
            timed_out, startup_failed = self._watch(proc, payload, ctl_r, outer_pidfd, started)
        finally:
            if proc is not None:
                self._kill_all(proc)
                proc.wait()
                self._drain(proc, ctl_r)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        try:
                            stream.close()
                        except OSError:
                            pass
            for fd in (ctl_r, ctl_w, outer_pidfd, self.inner_pidfd):
                if fd is not None and fd >= 0:
                    os.close(fd)
            _remove_tree(workdir)
        wall = time.monotonic() - (self.ready_at if self.ready_at is not None else started)
        return self._result(proc, timed_out, startup_failed, wall, workdir)

    def _streams(self, proc: subprocess.Popen, ctl_r: int) -> dict[int, _Capture]:
        assert proc.stdout is not None and proc.stderr is not None
        return {proc.stdout.fileno(): self.stdout, proc.stderr.fileno(): self.stderr, ctl_r: self.control}

    def _watch(self, proc: subprocess.Popen, payload: bytes, ctl_r: int, outer_pidfd: int,
               started: float) -> tuple[bool, bool]:
        """Feed the payload and collect output until the harness exits or a deadline passes: ``startup_timeout_s``
        until the harness reports ready, then ``wall_s`` from then on. Returns (timed_out, startup_failed)."""
        assert proc.stdin is not None
        streams = self._streams(proc, ctl_r)
        stdin_fd = proc.stdin.fileno()
        pending = memoryview(payload)
        sel = selectors.DefaultSelector()
        for fd in (*streams, stdin_fd):
            os.set_blocking(fd, False)
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        if outer_pidfd >= 0:
            sel.register(outer_pidfd, selectors.EVENT_READ)  # readable once the process has exited
        deadline = started + self.limits.startup_timeout_s
        try:
            while True:
                if _exited(proc.pid):
                    return False, False
                if self.ready_at is not None:
                    deadline = self.ready_at + self.limits.wall_s
                now = time.monotonic()
                if now >= deadline:
                    return self.ready_at is not None, self.ready_at is None
                timeout = deadline - now if outer_pidfd >= 0 else min(deadline - now, 0.02)
                for key, _ in sel.select(timeout=timeout):
                    if key.fd == outer_pidfd:
                        continue  # the loop's top sees the exit
                    if key.fd == stdin_fd:
                        try:
                            pending = pending[os.write(stdin_fd, pending):]
                        except BlockingIOError:
                            continue
                        except OSError:  # the harness is gone; its exit tells the rest
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(stdin_fd)
                            proc.stdin.close()
                        continue
                    if not self._read_into(key.fd, streams[key.fd]):
                        sel.unregister(key.fd)
        finally:
            sel.close()

    def _read_into(self, fd: int, capture: _Capture) -> bool:
        """Read what is available from ``fd``; False at EOF."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            capture.eof = True
            return False
        capture.add(chunk)
        if capture is self.control:
            self._parse_control()
        return True

    def _parse_control(self) -> None:
        data = self.control.data
        end = data.rfind(b"\n") + 1
        if end <= self.parsed:
            return
        for line in bytes(data[self.parsed:end]).split(b"\n")[:-1]:
            self._control_line(line)
        self.parsed = end

    def _control_line(self, line: bytes) -> None:
        parts = line.decode("ascii", "replace").split(" ")
        if len(parts) < 2 or parts[0] != self.nonce:
            return  # not from the harness: the program can write to this pipe too
        try:
            fields = [parts[1]] + [bytes.fromhex(p).decode("utf-8", "replace") for p in parts[2:]]
        except ValueError:
            return
        self.lines.append(fields)
        if fields[0] == "started" and self.inner_pid is None and len(fields) == 2 and fields[1].isdigit():
            self.inner_pid = int(fields[1])
            try:
                self.inner_pidfd = os.pidfd_open(self.inner_pid)
            except (AttributeError, OSError):
                self.inner_pidfd = None
        elif fields[0] == "ready" and self.ready_at is None:
            self.ready_at = time.monotonic()

    def _kill_all(self, proc: subprocess.Popen) -> None:
        """SIGKILL the sandbox: the inner harness (as init of its PID namespace, it takes every process in it
        along) and the outer harness's process group. The outer harness is not reaped yet, so neither its pid nor
        its group id can have been reused. Then wait (briefly) for the inner harness to be gone: as a namespace's
        init it exits only once every process in the namespace has."""
        if self.inner_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.inner_pidfd, signal.SIGKILL)
            except OSError:  # already gone
                pass
            try:
                select.select([self.inner_pidfd], [], [], _INNER_EXIT_S)  # readable once it has exited
            except OSError:
                pass
        elif self.inner_pid is not None and not _exited(proc.pid):
            try:  # no pidfd: only while its parent, the outer harness, lives, so the pid is still the inner one's
                os.kill(self.inner_pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def _drain(self, proc: subprocess.Popen, ctl_r: int) -> None:
        """Read what is left in the pipes, until EOF or a short deadline (a process that escaped the kill could
        hold a pipe open)."""
        streams = {fd: c for fd, c in self._streams(proc, ctl_r).items() if not c.eof}
        if not streams:
            return
        sel = selectors.DefaultSelector()
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + _DRAIN_S
        try:
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    if not self._read_into(key.fd, streams[key.fd]):
                        sel.unregister(key.fd)
        finally:
            sel.close()

    def _result(self, proc: subprocess.Popen | None, timed_out: bool, startup_failed: bool, wall: float,
                workdir: str) -> SandboxResult:
        limits = self.limits
        first: dict[str, list[str]] = {}
        passes: dict[int, list[bool]] = {}
        failures: dict[int, str] = {}
        for fields in self.lines:
            kind = fields[0]
            if kind == "setup_error" and "ready" in first:
                continue  # once the program has started, a broken harness is the program's doing
            if kind == "test" and len(fields) == 5 and fields[1].isdigit():
                passes.setdefault(int(fields[1]), []).append(fields[2] == "1")
                if fields[2] != "1":
                    failures.setdefault(int(fields[1]), fields[4])
            first.setdefault(kind, fields)
        ready = first.get("ready")
        layers = tuple(x for x in ready[1].split(",") if x) if ready and len(ready) > 1 else ()
        exit_code = status = cpu = sig_name = None
        if len(first.get("exit", ())) == 4:
            try:
                status, cpu = int(first["exit"][1]), float(first["exit"][2])
            except ValueError:
                pass
        if status is not None:
            if os.WIFEXITED(status):
                exit_code = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                sig_name = _signal_name(os.WTERMSIG(status))
        elif proc is not None and proc.returncode is not None and proc.returncode < 0 and not timed_out:
            sig_name = _signal_name(-proc.returncode)  # the outer harness itself was killed
        code = first.get("code")
        error = error_kind = None
        if code is not None and len(code) == 4 and code[1] != "1":
            error_kind, error = code[2], code[3]
        cpu_limit = _cpu_limit(limits)
        killed_by = None
        sandbox_error = False
        if "setup_error" in first or startup_failed or ready is None:
            sandbox_error = True
            if "setup_error" in first:
                reason = f"sandbox setup failed: {(first['setup_error'] + [''])[1]}"
            elif startup_failed:
                reason = f"sandbox did not start within {limits.startup_timeout_s:g} s"
            else:
                tail = bytes(self.stderr.data).decode("utf-8", "replace").strip().splitlines()[-1:]
                reason = f"sandbox harness failed to start (exit status {proc.returncode if proc else None})"
                reason += f": {tail[0][:300]}" if tail else ""
        elif timed_out:
            killed_by = WALL_TIME
            reason = f"killed: wall time limit {limits.wall_s:g} s exceeded"
        elif sig_name in ("SIGKILL", "SIGXCPU") and cpu is not None and cpu >= cpu_limit * 0.8:
            killed_by = CPU_TIME
            reason = f"killed: CPU time limit {cpu_limit} s exceeded"
        elif error_kind == "memory":
            killed_by = MEMORY
            reason = f"memory limit {limits.memory_mb} MB exceeded: {error}"
        elif error_kind == "processes":
            killed_by = PROCESSES
            reason = f"process limit ({limits.max_processes}) reached: {error}"
        elif error_kind == "file_size":
            killed_by = FILE_SIZE
            reason = f"file size or disk limit ({limits.max_file_mb} MB a file, {limits.disk_mb} MB in all) " \
                     f"reached: {error}"
        elif error_kind == "syntax":
            reason = error if error.startswith("SyntaxError") else f"cannot compile the program: {error}"
        elif error_kind == "blocked":
            reason = error.partition(": ")[2] or error  # "blocked by the sandbox: network access (...)"
        elif error_kind == "exit":
            reason = f"the program exited before its tests ran ({error})" if self.tests else f"exited ({error})"
        elif error is not None:
            reason = f"the program raised {error}"
        elif sig_name is not None:
            reason = f"killed by signal {sig_name}"
            if sig_name in ("SIGSEGV", "SIGABRT", "SIGBUS"):
                reason += f" (possibly out of memory: the limit is {limits.memory_mb} MB)"
        elif exit_code not in (0, None):
            reason = f"exited with status {exit_code}"
        elif code is None:
            reason = "the sandbox ended before the program finished"
        else:
            reason = "ok"
        outcomes = []
        for i in range(len(self.tests)):
            if i in passes:
                passed = all(passes[i])  # a test reported twice (a forked copy?) passes only if both say so
                outcomes.append(TestOutcome(passed, "" if passed else failures.get(i, "failed")))
            else:
                outcomes.append(TestOutcome(False, "not run: " + (reason if reason != "ok" else "the sandbox "
                                                                                                 "ended first")))
        return SandboxResult(
            exit_code=exit_code, signal=sig_name, stdout=bytes(self.stdout.data).decode("utf-8", "replace"),
            stderr=bytes(self.stderr.data).decode("utf-8", "replace"), timed_out=timed_out, killed_by=killed_by,
            reason=reason, isolation=layers, error=error, error_kind=error_kind, tests=tuple(outcomes),
            stdout_truncated=self.stdout.truncated, stderr_truncated=self.stderr.truncated,
            sandbox_error=sandbox_error, wall_s=wall, cpu_s=cpu, workdir=workdir,
        )


def _cpu_limit(limits: SandboxLimits) -> int:
    return max(1, math.ceil(limits.cpu_s))


def _exited(pid: int) -> bool:
    """Whether the child ``pid`` has exited, without reaping it (so its pid and process group id stay reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _remove_tree(path: str) -> None:
    """Remove the sandbox directory even if the program made parts of it unreadable or unwritable."""

    def fix_and_retry(func, target, _exc_info):  # noqa: ANN001
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix_and_retry)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# The harness, written into the sandbox directory and run as `python -I -B harness.py`. The payload (program,
# tests, limits, nonce) comes on stdin. Everything after the program starts is reached only through local
# variables and closures (never module globals, which the program can reach through sys.modules["__main__"]), and
# the builtins the harness itself uses are captured before the program runs.

_HARNESS = r'''
"""rlsys sandbox harness (see rlsys/rewards/sandbox.py). Not for running by hand."""
import builtins
import errno
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x1000, 0x4000, 1 << 18
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY, SYS_MOUNT_SETATTR = -100, 0x8000, 1, 442
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38

BLOCKED_EVENTS = {
    "os.system": "running a shell command", "os.fork": "starting a process", "os.forkpty": "starting a process",
    "os.posix_spawn": "starting a process", "os.spawn": "starting a process", "os.exec": "running a program",
    "subprocess.Popen": "starting a process", "pty.spawn": "starting a process",
    "os.kill": "sending a signal", "os.killpg": "sending a signal", "signal.pthread_kill": "sending a signal",
    "sys._current_frames": "frame introspection",
    "sys._current_exceptions": "frame introspection", "sys.settrace": "tracing", "sys.setprofile": "tracing",
    "sys.addaudithook": "adding an audit hook", "gc.get_objects": "heap introspection",
    "gc.get_referrers": "heap introspection", "gc.get_referents": "heap introspection",
    "resource.setrlimit": "changing limits",
    "resource.prlimit": "changing limits", "os.setns": "changing namespaces", "os.unshare": "changing namespaces",
}
IMPORT_TIME_ONLY = {"ctypes", "_ctypes", "_posixsubprocess"}  # only when trusted code imports them (numpy: ctypes)
BLOCKED_IMPORTS = {"_testcapi", "_testinternalcapi", "_testmultiphase",
                   "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "_interpchannels"}
FRAME_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}
# Events whose path arguments must stay inside the sandbox directory: event -> indices of path arguments.
PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
               "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
               "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,),
               "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
AF_UNIX = 1
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    nonce, ctl = cfg["nonce"], cfg["ctl_fd"]
    _write, _str, _OSError = os.write, str, OSError

    def send(kind, *fields):
        parts = [nonce, kind]
        for value in fields:
            parts.append(_str(value).encode("utf-8", "replace").hex())
        try:
            _write(ctl, (" ".join(parts) + "\n").encode())
        except _OSError:
            pass

    try:
        ctypes, call = libc_call()
        # If the caller dies (say, a reward worker killed for a timeout), so does the sandbox.
        call("prctl", PR_SET_PDEATHSIG, *(ctypes.c_ulong(v) for v in (signal.SIGKILL, 0, 0, 0)))
        if os.getppid() != cfg["host_pid"]:
            os._exit(72)  # it died before that took effect
        st = outer_setup(cfg)
    except Exception as e:
        send("setup_error", f"{type(e).__name__}: {e}")
        os._exit(71)
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = inner(cfg, st, send)
        except BaseException as e:
            send("setup_error", f"{type(e).__name__}: {e}")
        finally:
            os._exit(code)
    send("started", pid)
    _, status, usage = os.wait4(pid, 0)
    send("exit", status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
    os._exit(0)


def libc_call():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(name, *args):
        result = getattr(libc, name)(*args)
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}: {os.strerror(err)}")
        return result

    return ctypes, call


def count_tasks(uid):
    """Processes plus threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read().decode("ascii", "replace")
        except OSError:
            continue
        real_uid = threads = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                real_uid = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        if real_uid == uid:
            total += threads or 1
    return total


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def outer_setup(cfg):
    """In the outer harness: create the namespaces (the PID namespace takes effect for the inner harness)."""
    ctypes, call = libc_call()
    root = os.geteuid() == 0
    layers = ["session"]
    userns = False
    namespaces = set()
    uid, gid = os.getuid(), os.getgid()
    if cfg["namespaces"]:
        if not root:
            try:
                call("unshare", CLONE_NEWUSER)
                write_file("/proc/self/setgroups", "deny")
                write_file("/proc/self/uid_map", f"{uid} {uid} 1")
                write_file("/proc/self/gid_map", f"{gid} {gid} 1")
                userns = True
                layers.append("userns")
            except OSError:
                pass
        if root or userns:
            for flag, name in ((CLONE_NEWNET, "netns"), (CLONE_NEWPID, "pidns"), (CLONE_NEWNS, "mountns"),
                               (CLONE_NEWIPC, "ipcns")):
                try:
                    call("unshare", flag)
                    namespaces.add(name)
                except OSError:
                    pass
    if root:
        nproc_base = count_tasks(cfg["uid"])
    elif userns:
        nproc_base = 1  # the kernel counts per user namespace: only this outer harness is in ours so far
    else:
        nproc_base = count_tasks(uid)
    return {"ctypes": ctypes, "call": call, "root": root, "userns": userns, "namespaces": namespaces,
            "layers": layers, "nproc": nproc_base + cfg["max_processes"]}


def reachable(path, uid, gid, need):
    """Whether ``uid``/``gid`` (no supplementary groups) has the permission bits ``need`` (0o1 search, 0o4 read)
    on ``path``."""
    st = os.stat(path)
    if st.st_uid == uid:
        return st.st_mode & (need << 6) == need << 6
    if st.st_gid == gid:
        return st.st_mode & (need << 3) == need << 3
    return st.st_mode & need == need


def expose_paths(ctypes, call, uid, gid, workdir):
    """Make the interpreter's own directories (stdlib, site-packages) and the sandbox directory reachable for the
    unprivileged uid.

    A Python under a private directory (say /root/.pyenv, with /root mode 0700) would otherwise import nothing
    once the harness is no longer root. In our mount namespace, the topmost directory on the way that ``uid``
    cannot search is covered by an empty tmpfs (which also hides everything else in it), and the interpreter's
    directories are bind-mounted back in at their own paths."""
    wanted = set()
    for path in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix, *sys.path, workdir):
        if path and os.path.isdir(path):
            wanted.add(os.path.realpath(path))
    tops = []
    for path in sorted(wanted):
        if not any(path.startswith(top + "/") for top in tops):
            tops.append(path)
    hidden = {}  # blocking ancestor -> directories to bring back under it
    for path in tops:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if not reachable(ancestor, uid, gid, 0o1):
                if reachable(path, uid, gid, 0o5):
                    hidden.setdefault(ancestor, []).append(path)
                break
    for ancestor, paths in hidden.items():
        fds = [os.open(path, os.O_PATH | os.O_DIRECTORY) for path in paths]
        call("mount", b"tmpfs", ancestor.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV),
             b"size=64k,mode=0755")
        for path, fd in zip(paths, fds):
            os.makedirs(path, 0o755, exist_ok=True)
            call("mount", f"/proc/self/fd/{fd}".encode(), path.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC),
                 None)
            os.close(fd)
    return sorted(hidden)


def drop_capabilities(ctypes, call):
    for cap in range(64):
        try:
            call("prctl", PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0),
                 ctypes.c_ulong(0))
        except OSError:
            pass

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    call("capset", ctypes.byref(header), ctypes.byref(data))


def inner(cfg, st, send):
    """In the inner harness (PID 1 of the new PID namespace, if there is one): finish the sandbox, then run."""
    ctypes, call = st["ctypes"], st["call"]
    layers, namespaces = list(st["layers"]), st["namespaces"]
    workdir = cfg["workdir"]
    if "pidns" in namespaces:
        os.setsid()  # its own group: a kill(0) from the program reaches only the sandbox
    call("prctl", PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
         ctypes.c_ulong(0))
    layers += [n for n in ("netns", "pidns", "ipcns") if n in namespaces]
    uid = cfg["uid"] if st["root"] else os.getuid()
    gid = cfg["uid"] if st["root"] else os.getgid()
    if "mountns" in namespaces:
        call("mount", None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None)  # nothing propagates out
        layers.append("mountns")
        if st["root"]:
            expose_paths(ctypes, call, uid, gid, workdir)
        try:
            attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
            call("syscall", ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                 ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
            layers.append("fs_readonly")
        except OSError:
            pass
        options = f"size={cfg['disk_mb']}m,mode=0700,uid={uid},gid={gid}".encode()
        call("mount", b"tmpfs", workdir.encode(), b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC),
              options)
        layers.append("tmpfs")
        if "pidns" in namespaces:
            flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC)
            try:
                call("mount", b"proc", b"/proc", b"proc", flags, None)
                layers.append("procfs")
            except OSError:
                try:  # a /proc that shows the host's processes is worse than none
                    call("mount", b"tmpfs", b"/proc", b"tmpfs", ctypes.c_ulong(flags.value | MS_RDONLY), b"size=4k")
                    layers.append("proc_hidden")
                except OSError:
                    pass
    def limit(which, value):
        resource.setrlimit(which, (value, value))

    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, cfg["cpu_s"])
    limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] * 1024 * 1024)
    limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    limit(resource.RLIMIT_AS, cfg["memory_mb"] * 1024 * 1024)
    layers.append("rlimits")
    limit(resource.RLIMIT_NPROC, st["nproc"])
    if st["root"]:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(errno.EPERM, "could not drop root privileges")
        layers += ["uid_drop", "nproc"]
    else:
        if st["userns"]:
            drop_capabilities(ctypes, call)
            layers.append("caps_dropped")
        layers.append("nproc")
    # Again: changing credentials cleared it. (Dying with the outer harness takes the whole sandbox along.)
    call("prctl", PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
         ctypes.c_ulong(0))
    call("prctl", PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    layers.append("no_new_privs")
    os.chdir(workdir)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file-size limit fails with EFBIG instead
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    del ctypes, call, st
    if cfg["audit_hook"]:
        layers.append("audit_hook")
    send("ready", ",".join(layers))
    return execute(cfg, send)


def execute(cfg, send):
    """Run the program, then the tests. Returns the inner harness's exit code.

    From here on the program shares this interpreter: whatever the harness uses after the program has started
    is held in local variables and closures (captured builtins included), which the program cannot reach with
    frame and heap introspection blocked."""
    _exec, _compile, _isinstance, _type, _str, _int, _dict, _getattr = (
        exec, compile, isinstance, type, str, int, dict, getattr)
    _BaseException, _MemoryError, _OSError, _SystemExit, _SyntaxError, _ValueError, _RuntimeError = (
        BaseException, MemoryError, OSError, SystemExit, SyntaxError, ValueError, RuntimeError)
    _BlockingIOError = BlockingIOError
    _getpid, _exit, _setitimer, _signal = os.getpid, os._exit, signal.setitimer, signal.signal
    ITIMER_REAL, SIGALRM = signal.ITIMER_REAL, signal.SIGALRM
    EAGAIN, FILE_ERRNOS = errno.EAGAIN, (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)
    program, tests, test_timeout = cfg["program"], cfg["tests"], cfg["test_timeout_s"]
    builtins_dict = builtins.__dict__
    snapshot = _dict(builtins_dict)
    stdout, stderr = sys.stdout, sys.stderr
    me = _getpid()
    trusted = [False]

    class SandboxBlocked(PermissionError):
        """Raised by the audit hook for an operation the sandbox does not allow."""

    class TestTimeout(BaseException):
        """Raised by SIGALRM in a test that ran too long (a BaseException: `except Exception` does not hide it)."""

    def on_alarm(signum, frame):
        raise TestTimeout(f"the test took longer than {test_timeout:g} s")

    def restore_builtins():
        for key in [k for k in builtins_dict if k not in snapshot]:
            del builtins_dict[key]
        for key, value in snapshot.items():
            if builtins_dict.get(key) is not value:
                builtins_dict[key] = value

    def flush():
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except _BaseException:
                pass

    def text(value, default):
        try:
            value = value if _type(value) is _str else _str(value)
            return value if _type(value) is _str else default
        except _BaseException:
            return default

    def line_in(exc, filename):
        """The last line of ``filename`` in the exception's traceback. Tracebacks' frames are blocked for the
        program; the hook trusts this walk, which runs no code of the program's."""
        if _isinstance(exc, _SyntaxError):
            return exc.lineno if _type(exc.lineno) is _int else None
        trusted[0] = True
        try:
            tb, line = exc.__traceback__, None
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == filename:
                    line = tb.tb_lineno
                tb = tb.tb_next
            return line
        except _BaseException:
            return None
        finally:
            trusted[0] = False

    def describe(exc, filename, compiling=False):
        """(kind, exit code, "Type: message (line N)") for an exception from the program or a test."""
        name = text(_getattr(_type(exc), "__name__", None), "Exception")
        message = text(exc.msg if _isinstance(exc, _SyntaxError) else exc, "<unprintable message>")
        exit_code = 1
        if compiling and _isinstance(exc, (_SyntaxError, _ValueError)):
            kind = "syntax"  # ValueError from compile(): NUL bytes, lone surrogates
        elif _isinstance(exc, _MemoryError):
            kind = "memory"
        elif (_isinstance(exc, _BlockingIOError) and exc.errno == EAGAIN) or (
                _isinstance(exc, _RuntimeError) and "can't start new thread" in message):
            kind = "processes"
        elif _isinstance(exc, _OSError) and exc.errno in FILE_ERRNOS:
            kind = "file_size"
        elif _isinstance(exc, SandboxBlocked):
            kind = "blocked"
        elif _isinstance(exc, TestTimeout):
            kind = "timeout"
        elif _isinstance(exc, _SystemExit):
            kind = "exit"
            exit_code = exc.code if _type(exc.code) is _int and 0 <= exc.code < 256 else int(exc.code is not None)
            return kind, exit_code, f"SystemExit({text(exc.code, '?')})" if exc.code is not None else "SystemExit"
        else:
            kind = "error"
        line = line_in(exc, filename)
        summary = f"{name}: {message}" if message else name
        if line is not None:
            summary += f" (line {line})"
        return kind, exit_code, summary[:500]

    def run(source, filename, namespace, timeout):
        """(ok, kind, exit code, description) for running ``source`` in ``namespace``."""
        try:
            code = _compile(source, filename, "exec", dont_inherit=True)
        except _BaseException as e:  # SyntaxError; ValueError for NUL bytes; MemoryError, RecursionError
            return (False,) + describe(e, filename, compiling=True)
        if timeout:
            _signal(SIGALRM, on_alarm)
            _setitimer(ITIMER_REAL, timeout)
        try:
            _exec(code, namespace)
            return True, "", 0, ""
        except _BaseException as e:
            return (False,) + describe(e, filename)
        finally:
            if timeout:
                _setitimer(ITIMER_REAL, 0)

    if cfg["audit_hook"]:
        try:  # the one way to start a process that raises no audit event: stub it out (subprocess still imports)
            import _posixsubprocess

            def fork_exec(*args, **kwargs):
                raise SandboxBlocked("blocked by the sandbox: starting a process (_posixsubprocess.fork_exec)")

            _posixsubprocess.fork_exec = fork_exec
        except ImportError:
            pass
        sys.addaudithook(make_hook(os.path.realpath(cfg["workdir"]), trusted, SandboxBlocked))
    namespace = {"__name__": "solution" if tests else "__main__", "__builtins__": builtins}
    ok, kind, exit_code, summary = run(program, "<solution>", namespace, None)
    if _getpid() != me:  # a forked copy falling out of the program: only the harness's own process reports
        _exit(0)
    flush()
    restore_builtins()
    send("code", 1 if ok else 0, kind, summary)
    if not ok:
        if not tests and kind != "exit":
            try:
                stderr.write(summary + "\n")
            except _BaseException:
                pass
        flush()
        return exit_code
    for index, test in enumerate(tests):
        restore_builtins()
        scope = _dict(namespace)  # each test gets its own copy: one test's assignments do not leak into the next
        scope["__builtins__"] = builtins
        scope["__name__"] = "test"
        passed, kind, _, summary = run(test, f"<test {index}>", scope, test_timeout)
        if _getpid() != me:
            _exit(0)
        restore_builtins()
        send("test", index, 1 if passed else 0, kind, summary)
    flush()
    return 0


def make_hook(workdir, trusted, SandboxBlocked):
    """The audit hook: raise SandboxBlocked for what the sandbox does not allow. It captures what it uses, so the
    program cannot change its behaviour by patching builtins or os.

    Frame introspection (sys._getframe, a traceback's or generator's frame: from any frame of the program,
    f_back leads to the harness's) is refused to the program's own code but allowed to the standard library's,
    which relies on it (namedtuple, enum, traceback formatting, logging), except where the library would hand a
    frame of the program back to the program (inspect, traceback.walk_stack/walk_tb, logging.currentframe).
    The caller is judged by the file name of the code that asked, so making code objects that pass for the
    standard library's (compile() or marshal with such a file name, code.replace) is refused to the program too.
    This stops a program from reaching the harness's nonce the easy ways; it is not a proof that no way exists.
    """
    _isinstance, _str, _bytes, _int, _len, _any, _tuple, _getattr, _Exception = (
        isinstance, str, bytes, int, len, any, tuple, getattr, Exception)
    realpath, fspath, getframe = os.path.realpath, os.fspath, sys._getframe
    blocked_events = dict(BLOCKED_EVENTS)
    blocked_imports, frame_attrs = frozenset(BLOCKED_IMPORTS), frozenset(FRAME_ATTRS)
    import_time_only = frozenset(IMPORT_TIME_ONLY)
    path_events, write_flags = dict(PATH_EVENTS), WRITE_FLAGS
    allowed_files = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
    inside_prefix = workdir + "/"
    harness_file = realpath(__file__)
    trusted_dirs = tuple(sorted({realpath(p) + "/" for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix,
                                                              sys.exec_prefix)}))
    checking = [False]
    stdlib = realpath(os.path.dirname(os.__file__)) + "/"
    importlib_dir = stdlib + "importlib/"
    # Standard-library code that may read a frame of the program's (only to learn its module's name).
    frame_readers = frozenset(stdlib + name for name in ("collections/__init__.py", "enum.py", "typing.py"))
    # Standard-library code that hands the frames it gets to its caller.
    frame_leakers = frozenset({stdlib + "inspect.py", stdlib + "bdb.py", stdlib + "pdb.py", stdlib + "cgitb.py"})
    leaking_functions = frozenset({(stdlib + "traceback.py", "walk_tb"), (stdlib + "traceback.py", "walk_stack"),
                                   (stdlib + "logging/__init__.py", "<lambda>")})

    def trusted_name(name):
        return _isinstance(name, _str) and (name == harness_file or name.startswith("<frozen ")
                                            or name.startswith(trusted_dirs))

    def caller_trusted():
        """Whether the code that raised the event (two frames up: this function, then the hook) is trusted."""
        checking[0] = True  # the frame access below raises events too; they are ours
        try:
            return trusted_name(getframe(2).f_code.co_filename)
        except _Exception:
            return False
        finally:
            checking[0] = False

    def frame_access_allowed(event, args):
        """For sys._getframe and tb_frame/gi_frame/...: allowed to trusted code, unless it would get a frame of
        the program's and is known to hand frames back (or, for sys._getframe, is not known not to)."""
        checking[0] = True
        try:
            code = getframe(2).f_code
            caller, function = code.co_filename, code.co_name
            if not trusted_name(caller):
                return False
            if event == "sys._getframe":
                frame = args[0]
            else:
                frame = _getattr(args[0], args[1], None)  # the frame the caller is about to get
            if caller in frame_leakers or (caller, function) in leaking_functions:
                # It hands what it gets (or what it reaches from there) to its own caller: that must be trusted.
                return trusted_name(getframe(3).f_code.co_filename)
            if frame is None or trusted_name(frame.f_code.co_filename):
                return True
            return event != "sys._getframe" or caller in frame_readers
        except _Exception:
            return False
        finally:
            checking[0] = False

    def import_time_trusted():
        """Whether the event comes from a module import that trusted code asked for (numpy importing ctypes), not
        from the program: from the event up, only trusted frames until the import machinery, and past it, a
        trusted importer."""
        checking[0] = True
        try:
            frame = getframe(2)
            while frame is not None and not machinery(frame.f_code.co_filename):
                if not trusted_name(frame.f_code.co_filename):
                    return False
                frame = frame.f_back
            while frame is not None and machinery(frame.f_code.co_filename):
                frame = frame.f_back
            return frame is None or trusted_name(frame.f_code.co_filename)
        except _Exception:
            return False
        finally:
            checking[0] = False

    def machinery(name):
        return _isinstance(name, _str) and (name.startswith("<frozen importlib") or name.startswith(importlib_dir))

    def inside(path):
        if _isinstance(path, _int):
            return True  # an already-open file descriptor
        try:
            path = fspath(path)
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
            resolved = realpath(path)
        except _Exception:
            return False
        return resolved == workdir or resolved.startswith(inside_prefix) or resolved in allowed_files

    def unix_socket_allowed(event, args):
        """Sockets are blocked, except Unix sockets among the program's own (asyncio's event loop wakes itself
        through a socketpair): creating one, and binding, connecting or sending to a path inside the sandbox
        directory. Abstract addresses are refused: without a network namespace they reach the host's."""
        if event == "socket.__new__":
            return _len(args) > 1 and args[1] == AF_UNIX
        if event in ("socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg") and _len(args) > 1:
            address = args[1]
            if _isinstance(address, _bytes):
                address = address.decode("utf-8", "surrogateescape")
            return _isinstance(address, _str) and address[:1] not in ("", "\0") and inside(address)
        return False

    def block(what, event):
        raise SandboxBlocked(f"blocked by the sandbox: {what} ({event})")

    def hook(event, args):
        if trusted[0] or checking[0]:
            return
        if event in blocked_events:
            block(blocked_events[event], event)
        if event.startswith("socket."):
            if not unix_socket_allowed(event, args):
                block("network access", event)
        elif event == "open":
            path, mode, flags = (_tuple(args) + (None, None, None))[:3]
            writing = (_isinstance(flags, _int) and flags & write_flags) or (
                _isinstance(mode, _str) and _any(c in mode for c in "wax+"))
            if writing and not inside(path):
                block(f"writing outside the sandbox directory ({path!r})", event)
        elif event in path_events:
            for index in path_events[event]:
                if index < _len(args) and not inside(args[index]):
                    block(f"changing files outside the sandbox directory ({args[index]!r})", event)
        elif event == "import":
            name = args[0] if args else ""
            top = name.partition(".")[0] if _isinstance(name, _str) else ""
            if top in blocked_imports or (top in import_time_only and not import_time_trusted()):
                block(f"importing {name}", event)
        elif event.startswith("ctypes."):
            if not import_time_trusted():
                block("ctypes", event)
        elif event == "sys._getframe" or (event == "object.__getattr__" and _len(args) > 1
                                          and args[1] in frame_attrs):
            if not frame_access_allowed(event, args):
                block("frame introspection", event if event == "sys._getframe" else f"{event} {args[1]}")
        elif event == "compile":
            if _len(args) > 1 and trusted_name(args[1]) and not caller_trusted():
                block(f"compiling code that passes for the standard library's ({args[1]!r})", event)
        elif event == "marshal.loads":
            if not caller_trusted():
                block("loading marshalled code", event)
        elif event == "code.__new__":  # asyncio makes some; the program could fake a stdlib file name with it
            if not caller_trusted():
                block("building code objects", event)

    return hook


main()
'''
