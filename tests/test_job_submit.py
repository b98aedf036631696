"""End to end: ``launchers/submit.sh`` runs a tiny ``rlsys train`` as a Ray job on a real local head node.

The head is a separate ``ray start --head --block`` process with its own ``--temp-dir`` and its own free ports
(GCS, dashboard, dashboard agent, client server, runtime-env agent, metrics), so it neither collides with nor
is found by another Ray on this machine: the session's in-process ``ray.init()`` cluster (tests/conftest.py)
holds the default ports such as the dashboard agent's 52365, and a head without its own agent port would come
up without a job agent ("No available agent to submit job"). A plain ``ray.init()`` finds a ``ray start``
cluster through ``<temp-dir>/ray_current_cluster``; with a private temp dir nothing else attaches to this one.

Clean-up deliberately does not use ``ray stop --force``: it cannot target one cluster and would kill every Ray
process on the machine, including the test session's own. Instead the finalizer ends exactly this head: it
terminates ``ray start --block`` (which stops its children), then SIGKILLs what is left of its process group,
its descendants, and any process whose command line names the private temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "launchers" / "submit.sh"
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 600
STARTUP_TIMEOUT_S = 180

pytestmark = [pytest.mark.slow, pytest.mark.timeout(JOB_TIMEOUT_S + STARTUP_TIMEOUT_S + 120)]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _cluster_env() -> dict[str, str]:
    """The environment of both sides: auth off, this venv's bin first (the job's `rlsys` entrypoint), no
    inherited cluster address."""
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    # Ray gives its dashboard 60 s to come up, and `ray start --head` fails after that: on a 2-core machine loaded by
    # the rest of the suite it once took longer (2026-12-01, load average 10: 13 s just to import its modules).
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               RAY_DASHBOARD_STARTUP_TIMEOUT_S=str(STARTUP_TIMEOUT_S))
    return env


def _kill_head(head: subprocess.Popen, temp_dir: str) -> None:
    import psutil

    def ours() -> set:
        found = set()
        try:
            found.update(psutil.Process(head.pid).children(recursive=True))
        except psutil.Error:
            pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
                    found.add(p)
                    found.update(p.children(recursive=True))
            except psutil.Error:
                pass
        found.discard(psutil.Process(os.getpid()))
        return found

    procs = ours()  # snapshot before anything dies and its children are re-parented away
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # the head runs in its own session/process group
    except (ProcessLookupError, PermissionError):
        pass
    for p in procs | ours():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs), timeout=10)
    if head.poll() is None:
        head.kill()
        head.wait(timeout=10)


@pytest.fixture
def ray_head(request):
    """A local head node with the dashboard: yields (dashboard URL, temp dir); stopped in a finalizer."""
    # Short: Ray's unix sockets live under <temp-dir>/session_<date>_<pid>/sockets/ (limit ~107 chars).
    temp_dir = tempfile.mkdtemp(prefix="rjs-", dir="/tmp")
    gcs, dash, agent_http, agent_grpc, client, runtime_env_agent, metrics = _free_ports(7)
    log_path = Path(temp_dir) / "ray_start.log"
    log = open(log_path, "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client}", f"--runtime-env-agent-port={runtime_env_agent}",
         f"--metrics-export-port={metrics}", "--num-cpus=4", "--disable-usage-stats"],
        env=_cluster_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp_dir,
    )
    failed_before = request.session.testsfailed

    def finalize() -> None:
        _kill_head(head, temp_dir)
        log.close()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(temp_dir, ignore_errors=True)
        else:  # keep the head's logs for a failed run
            print(f"\nray head logs kept in {temp_dir} (ray_start.log, session_latest/logs/)")

    request.addfinalizer(finalize)

    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    # The dashboard answering is not enough: jobs are handed to the head's dashboard agent, which comes up later.
    while not (_answers(f"{url}/api/version") and _answers(f"http://127.0.0.1:{agent_http}/api/healthz")):
        if head.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.returncode}:\n{log_path.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the head's dashboard/agent did not answer within {STARTUP_TIMEOUT_S} s:\n"
                        f"{log_path.read_text()[-5000:]}")
        time.sleep(1)
    yield url, temp_dir


def test_submit_tiny_job(ray_head, tmp_path):
    url, _ = ray_head
    overrides = [
        "train.num_steps=3", "warmup.steps=20", "task.num_train=200", "task.num_eval=20", "train.eval_every=0",
        f"output.root={tmp_path}/runs", "output.run_name=job", f"output.cache_dir={tmp_path}/cache",
    ]
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SUBMIT), url, *overrides], cwd=tmp_path, env=_cluster_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=JOB_TIMEOUT_S,
    )
    took = time.monotonic() - start
    out = proc.stdout
    assert proc.returncode == 0, f"submit.sh exited {proc.returncode} after {took:.0f} s:\n{out[-8000:]}"
    assert "held-out accuracy" in out, out[-8000:]
    run_dir = tmp_path / "runs" / "job"  # the driver ran on the head node: this machine
    assert (run_dir / "summary.json").is_file(), out[-8000:]
    assert (run_dir / "model" / "config.json").is_file(), out[-8000:]
    print(f"job submitted and finished in {took:.0f} s")
