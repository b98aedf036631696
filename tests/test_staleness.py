"""Admission control and the buffer's staleness drop, without Ray."""

import numpy as np

from rlsys.buffer import GroupBuffer
from rlsys.staleness import AdmissionGate, is_too_stale
from rlsys.types import Group, Prompt, Sample


def group(pid: str, version: int) -> Group:
    s = Sample(pid, 0, 0, np.zeros(2, np.int32), np.zeros(1, np.int32), np.zeros(1, np.float32), "stop", version, "",
               reward=1.0)
    return Group(Prompt(pid, "", ""), (s,))


def test_is_too_stale():
    assert not is_too_stale(3, 3, 0)
    assert is_too_stale(2, 3, 0)
    assert not is_too_stale(1, 3, 2)
    assert is_too_stale(0, 3, 2)


def test_eta_zero_admits_exactly_one_step_per_version():
    gate = AdmissionGate(groups_per_step=4, max_staleness=0)
    assert gate.capacity(rollout_version=0) == 4
    gate.admit(4, 0)
    assert gate.capacity(0) == 0  # nothing more until version 1 reaches the rollout workers
    assert gate.capacity(1) == 4
    gate.admit(4, 1)
    assert gate.capacity(1) == 0


def test_eta_k_lets_rollout_run_k_steps_ahead_and_no_further():
    gate = AdmissionGate(groups_per_step=2, max_staleness=3)
    assert gate.capacity(0) == 8  # steps 0..3 may all use version-0 samples
    gate.admit(8, 0)
    assert gate.capacity(0) == 0
    assert gate.capacity(1) == 2


def test_discarded_groups_free_their_slots():
    gate = AdmissionGate(groups_per_step=2, max_staleness=0)
    gate.admit(2, 0)
    gate.discard(1)
    assert gate.capacity(0) == 1


def test_admit_over_capacity_is_an_internal_error():
    gate = AdmissionGate(groups_per_step=2, max_staleness=0)
    try:
        gate.admit(3, 0)
    except RuntimeError as e:
        assert "capacity 2" in str(e)
    else:
        raise AssertionError("admit beyond capacity must raise")


def test_buffer_hands_out_oldest_first_and_only_full_batches():
    buf = GroupBuffer(max_staleness=5)
    buf.put([group("b", 2), group("a", 1), group("c", 2)])
    assert buf.take(4, learner_version=2).batch is None
    assert len(buf) == 3
    take = buf.take(2, learner_version=2)
    assert [g.prompt.prompt_id for g in take.batch] == ["a", "b"]  # version 1 first, then arrival order
    assert take.depth_after == 1


def test_buffer_hands_out_in_admission_order_whatever_order_the_puts_arrive_in():
    """Reward calls finish in any order; a batch is the oldest version's groups in the order their requests were
    admitted (then their place in the request), so a synchronous run trains the same batches every time."""
    buf = GroupBuffer(max_staleness=5)
    buf.put([group("r3a", 1), group("r3b", 1)], order=3)
    buf.put([group("r1", 1)], order=1)
    buf.put([group("r2", 0)], order=2)
    take = buf.take(4, learner_version=1)
    assert [g.prompt.prompt_id for g in take.batch] == ["r2", "r1", "r3a", "r3b"]


def test_buffer_drops_and_reports_stale_groups():
    buf = GroupBuffer(max_staleness=1)
    buf.put([group("old", 0), group("ok", 1), group("new", 2)])
    take = buf.take(2, learner_version=2)
    assert [g.prompt.prompt_id for g in take.dropped] == ["old"]
    assert [g.prompt.prompt_id for g in take.batch] == ["ok", "new"]
    assert all(2 - g.version <= 1 for g in take.batch)
