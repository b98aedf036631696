"""From scored groups to a learner's batch: which samples train, with what weight, on which rank and update; and
DAPO's dynamic sampling at the buffer. Plain Python objects, no Ray (the actors are thin around these)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rlsys.actors.buffer import BufferActor
from rlsys.actors.learner import compute_advantages, rank_batch
from rlsys.algos import group_advantages, sample_loss_weights
from rlsys.config import AlgoConfig
from rlsys.types import Group, Prompt, RolloutBatch, Sample

MAX_NEW = 6


def group(pid: str, rewards: list[float], lengths: list[int], truncated: tuple[int, ...] = ()) -> Group:
    prompt = Prompt(pid, f"q{pid}", "a")
    samples = tuple(
        Sample(pid, j, 0, np.array([1, 2, 3], np.int32), np.arange(4, 4 + n, dtype=np.int32),
               np.full(n, -1.0, np.float32), "length" if j in truncated else "stop", 0, "x", reward=r,
               reward_failed=math.isnan(r))
        for j, (r, n) in enumerate(zip(rewards, lengths)))
    return Group(prompt, samples)


@pytest.fixture
def groups() -> list[Group]:
    return [
        group("a", [1.0, 0.0], [2, 4]),
        group("b", [1.0, 1.0], [1, 3]),  # zero variance
        group("c", [math.nan, 0.0], [2, 2]),  # a failed reward
        group("d", [0.0, 1.0], [6, 3], truncated=(0,)),  # a truncated response
    ]


def test_untrainable_samples_keep_their_rows_but_have_no_tokens(groups):
    planned = rank_batch(groups, 0, 1, 0, AlgoConfig(overlong_filter=True, filter_zero_variance=True), MAX_NEW)
    b = planned.batch
    assert len(b) == 8  # every sample keeps a row: all ranks run the same micro-batches
    tokens = b.mask.sum(-1).tolist()
    # b: zero variance; c0: failed, which leaves c1 alone in its group (no preference); d0: truncated
    assert tokens == [2, 4, 0, 0, 0, 0, 0, 3]
    assert (b.loss_weight == 0).tolist() == [t == 0 for t in tokens]
    assert planned.counts["batch/trainable_frac"] == pytest.approx(3 / 8)
    assert planned.counts["batch/zero_variance_group_frac"] == pytest.approx(2 / 4)  # b, and c (one rewarded)
    # without the filters only the failed reward is out
    plain = rank_batch(groups, 0, 1, 0, AlgoConfig(), MAX_NEW).batch
    assert plain.mask.sum(-1).tolist() == [2, 4, 1, 3, 0, 2, 6, 3]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant"])
def test_loss_weights_are_global_across_ranks_and_per_minibatch(groups, mode):
    algo = AlgoConfig(loss_agg=mode, minibatches=2)
    planned = [rank_batch(groups, r, 2, 0, algo, MAX_NEW) for r in range(2)]
    ranks = [p.batch for p in planned]
    # mini-batch 0 = groups a, b and mini-batch 1 = c, d, whatever the number of ranks; rank 0 trains a and c,
    # rank 1 trains b and d
    assert [p.sample_index.tolist() for p in planned] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [b.minibatch.tolist() for b in ranks] == [[0, 0, 1, 1], [0, 0, 1, 1]]
    lengths = np.array([2, 4, 1, 3, 2, 2, 6, 3])
    trainable = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)
    expected = sample_loss_weights(lengths, trainable, mode, MAX_NEW, np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    got = np.concatenate([b.loss_weight.numpy() for b in ranks])
    np.testing.assert_allclose(got, expected[[0, 1, 4, 5, 2, 3, 6, 7]], rtol=1e-6)
    one_rank = rank_batch(groups, 0, 1, 0, algo, MAX_NEW).batch
    np.testing.assert_allclose(one_rank.loss_weight.numpy(), expected, rtol=1e-6)  # the same weights on 1 rank
    # mini-batch 0 = a0, a1, b0, b1: 4 samples and 2 + 4 + 1 + 3 = 10 tokens
    if mode == "token_mean":
        assert got[0] == pytest.approx(1 / 10)
    if mode == "seq_mean_token_sum":
        assert got[0] == pytest.approx(1 / 4)


def test_minibatches_hold_the_same_groups_for_any_number_of_ranks():
    from rlsys.actors.learner import assign_groups

    for world in (1, 2, 4):
        rank, minibatch = assign_groups(16, world, 2)
        assert minibatch.tolist() == [0] * 8 + [1] * 8
        assert np.bincount(rank).tolist() == [16 // world] * world  # balanced
        for r in range(world):  # every rank has an equal part of every mini-batch
            assert np.bincount(minibatch[rank == r]).tolist() == [8 // world] * 2


def test_overlong_penalty_shapes_the_rewards(groups):
    planned = rank_batch(groups, 0, 1, 0, AlgoConfig(overlong_buffer=2), MAX_NEW)
    # L_max = 6, buffer 2: length 6 → −1, length 4 → 0, length 5 would be −0.5
    assert planned.rewards[3].tolist() == [pytest.approx(-1.0), pytest.approx(1.0)]
    assert planned.rewards[0].tolist() == [1.0, 0.0]


def test_outcome_advantages_are_broadcast_to_response_tokens(groups):
    algo = AlgoConfig()
    planned = rank_batch(groups, 0, 1, 0, algo, MAX_NEW)
    batch = compute_advantages(algo, planned.rewards, planned.batch, lambda t: t, lambda t: t)
    expected = group_advantages(planned.rewards, algo.adv_eps).reshape(-1)
    for i in range(len(batch)):
        on = batch.mask[i] > 0
        assert torch.allclose(batch.advantages[i][on], expected[i].expand(int(on.sum())))
        assert torch.all(batch.advantages[i][~on] == 0)


def test_kl_in_the_reward_lowers_the_reward_of_the_sample_that_drifted(groups):
    algo = AlgoConfig(advantage="dr_grpo", kl_coef=1.0, kl_in="reward", kl_estimator="k1")
    planned = rank_batch(groups[:1], 0, 1, 0, algo, MAX_NEW)
    # the reference gives sample 1 (reward 0, 4 tokens) log π_ref = −1.5 per token: k1 = −1 − (−1.5) = 0.5 per token
    ref = planned.batch.behaviour_logprobs.clone()
    ref[1][planned.batch.mask[1] > 0] = -1.5
    import dataclasses

    batch = compute_advantages(algo, planned.rewards, dataclasses.replace(planned.batch, ref_logprobs=ref),
                               lambda t: t, lambda t: t)
    # rewards become [1, 0 − 4·0.5] = [1, −2]; Dr. GRPO: r − mean = [1.5, −1.5]
    assert batch.advantages[0][batch.mask[0] > 0].tolist() == pytest.approx([1.5, 1.5])
    assert batch.advantages[1][batch.mask[1] > 0].tolist() == pytest.approx([-1.5] * 4)


def test_dynamic_sampling_drops_flat_groups_on_arrival_and_records_why(tmp_path, groups):
    buffer = BufferActor(max_staleness=1, sample_log_path=str(tmp_path / "samples.parquet"), dynamic_sampling=True)
    put = buffer.put(RolloutBatch(0, groups, 0, 0.1))
    assert put.filtered_keys == [("b", 0), ("c", 0)]  # all equal; only one rewarded sample
    assert put.depth == 2 and put.num_groups == 4  # generated 4, kept 2
    buffer.close(0)
    rows = pq.read_table(tmp_path / "samples.parquet").to_pylist()
    dropped = {(r["prompt_id"], r["dropped"]) for r in rows}
    assert ("b", "dynamic sampling: all rewards in the group are equal") in dropped
    assert {r["prompt_id"] for r in rows if r["dropped"].startswith("run ended")} == {"a", "d"}

    keep_all = BufferActor(max_staleness=1, sample_log_path=None)
    assert keep_all.put(RolloutBatch(0, groups, 0, 0.1)).depth == 4


@pytest.mark.parametrize("filters", [(False, False), (True, True)])
def test_the_sample_log_says_why_each_sample_of_a_trained_group_did_not_train(tmp_path, groups, filters):
    """The learner's loss mask and the sample log come from one function: a sample logged as trained ("") is
    exactly one the learner gives tokens, and every other carries its reason."""
    overlong, zero_variance = filters
    buffer = BufferActor(max_staleness=1, sample_log_path=str(tmp_path / "samples.parquet"),
                         overlong_filter=overlong, filter_zero_variance=zero_variance)
    buffer.put(RolloutBatch(0, groups, 0, 0.1))
    taken, _ = buffer.take(4, 0)
    buffer.close(1)
    rows = pq.read_table(tmp_path / "samples.parquet").to_pylist()
    reasons = [r["dropped"] for r in rows]
    algo = AlgoConfig(overlong_filter=overlong, filter_zero_variance=zero_variance)
    tokens = rank_batch(taken, 0, 1, 0, algo, MAX_NEW).batch.mask.sum(-1).tolist()
    assert [why == "" for why in reasons] == [t > 0 for t in tokens]
    expected = ["", "", "", "", "reward failed", "", "", ""] if not overlong else [
        "", "", "all rewards in the group are equal (algo.filter_zero_variance)",
        "all rewards in the group are equal (algo.filter_zero_variance)", "reward failed",
        "all rewards in the group are equal (algo.filter_zero_variance)", "truncated (algo.overlong_filter)", ""]
    assert reasons == expected


def test_the_sample_log_is_a_directory_of_whole_parts_readable_before_it_is_closed(tmp_path, groups, monkeypatch):
    """Each flush writes a complete part, so what was flushed reads back even if the process dies before close;
    a log continued in the same directory appends after the parts already there."""
    import rlsys.samples_io as samples_io

    monkeypatch.setattr(samples_io, "FLUSH_ROWS", 4)  # a part per 4 rows (the default is thousands)
    path = tmp_path / "samples.parquet"
    log = samples_io.SampleLog(path)
    log.write(groups[:1], 0, "")  # 2 rows: buffered
    assert not list(path.glob("part-*.parquet"))
    log.write(groups[1:3], 0, "")  # 6 rows: written as part 0
    assert [p.name for p in sorted(path.glob("part-*.parquet"))] == ["part-00000.parquet"]
    assert pq.read_table(path).num_rows == 6  # readable without close()
    log.write(groups[3:], 1, "")
    log.close()
    again = samples_io.SampleLog(path)
    again.write(groups[:1], 2, "")
    again.close()
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 10 and [r["learner_version"] for r in rows][-2:] == [2, 2]
    assert [p.name for p in sorted(path.glob("part-*.parquet"))] == [f"part-0000{i}.parquet" for i in range(3)]


def test_a_sample_log_continued_from_an_older_rlsys_reads_with_every_column(tmp_path, groups):
    """A log whose first part predates the token_versions column (as a resumed run of an older rlsys leaves it):
    read_samples gives the old rows null there and the new rows their per-token versions — a plain read would take
    the first part's schema and drop the column from every part."""
    import dataclasses

    import numpy as np

    from rlsys.samples_io import SCHEMA, SampleLog, read_samples

    path = tmp_path / "samples.parquet"
    log = SampleLog(path)
    log.write(groups[:2], 0, "")
    log.close()
    old = pq.read_table(path / "part-00000.parquet").drop_columns(["token_versions"])
    pq.write_table(old, path / "part-00000.parquet")
    spanning = dataclasses.replace(groups[2], samples=tuple(
        dataclasses.replace(s, token_versions=np.arange(len(s.response_ids), dtype=np.int32))
        for s in groups[2].samples))
    again = SampleLog(path)
    again.write([spanning, groups[3]], 1, "")
    again.close()
    assert "token_versions" not in pq.read_table(path).column_names  # what the fix is for
    rows = read_samples(path).to_pylist()
    assert read_samples(path).schema == SCHEMA and len(rows) == 8
    assert [r["token_versions"] for r in rows[:4]] == [None] * 4
    assert [r["token_versions"] for r in rows[4:6]] == [list(range(len(r["response_ids"]))) for r in rows[4:6]]
    assert all(r["token_versions"] == [r["version"]] * len(r["response_ids"]) for r in rows[6:])
    assert read_samples(path, ["version", "token_versions"]).column_names == ["version", "token_versions"]
