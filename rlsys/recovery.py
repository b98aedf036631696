"""Going back to a checkpoint: on a resume (``rlsys train --resume``) and, inside the same job, when an actor holding
the run's state dies (:class:`~rlsys.failures.StateLost`: a learner rank, the buffer or the reference actor).

A recovery inside the job rebuilds the learner group, the buffer and the reference actor
(:meth:`~rlsys.actors.placement.ActorHandles.rebuild_state_holders`), loads the newest valid checkpoint into the
learners, and hands the checkpoint's state to a new controller, which rolls the rollout workers back to that version
(the restored weights go ahead of each one's next request) and generates again the prompts that were in flight.
The rollout and reward workers are kept: an inference engine takes longest to start.

What it costs: the steps trained since the checkpoint — their sample-log parts are set aside as
``samples.parquet/_discarded-after-v<N>/`` (the groups the dead run's buffer still held among them, recorded with
the reason "rolled back ..."), so the log of the run counts each prompt once — and the learners' start-up.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray
from ray.exceptions import RayError

from rlsys.actors.placement import ActorHandles, setup_learners
from rlsys.checkpoint import STATE, latest_valid
from rlsys.config import ConfigError
from rlsys.failures import StateLost, first_line
from rlsys.samples_io import set_aside_parts

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 60.0  # for the dead run's buffer to record what it held


def newest_checkpoint(run_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest valid checkpoint of the run in ``run_dir`` and its driver state (None, None: there is none); each
    damaged newer one is named in a warning."""
    checkpoint, skipped = latest_valid(run_dir / "checkpoints")
    for why in skipped:
        log.warning("not going back to a damaged checkpoint: %s", why)
    if checkpoint is None:
        return None, None
    return checkpoint, json.loads((checkpoint / STATE).read_text())


def set_aside_later_samples(samples_path: Path, keep: int, version: int) -> None:
    """Move the sample-log parts after the first ``keep`` (those written after the checkpoint of ``version``) out
    of the log, before a buffer opens it: their timeline is discarded and its prompts trained again
    (:func:`rlsys.samples_io.set_aside_parts`)."""
    if samples_path.is_dir():
        moved = set_aside_parts(samples_path, keep, f"discarded-after-v{version}")
        log.info("back at version %d: %d sample-log part(s) written after it set aside", version, moved)


def load_learners(actors: ActorHandles, checkpoint: Path, state: dict) -> None:
    """Every learner rank loads its part of ``checkpoint``; raises :class:`ConfigError` if they end at another
    version than the checkpoint's state says."""
    versions = ray.get([learner.load_checkpoint.remote(str(checkpoint)) for learner in actors.learners])
    if set(versions) != {state["version"]}:
        raise ConfigError(f"{checkpoint}: the learner ranks restored versions {versions}, its state.json says "
                          f"{state['version']}")


def recover(actors: ActorHandles, run_dir: Path, samples_path: Path | None, lost: StateLost, version: int,
            checkpointing: bool, recoveries_left: int) -> tuple[Path | None, dict | None]:
    """Rebuild the learner group, buffer and reference actor after ``lost`` (found at policy ``version``) from the
    run's newest valid checkpoint; returns it and its driver state for :meth:`Controller.restore`. A run that
    checkpoints (``checkpointing``) but died before its first checkpoint starts over (returns None, None): the new
    learners hold the initial policy, and a controller with no state is the run at version 0.

    Raises ``lost`` itself, with what was missing added, when the run writes no checkpoints
    (``train.checkpoint_every=0``: going back to the start of a long run is not what anyone wants done silently) or
    no recovery is left (``train.max_recoveries``)."""
    checkpoint, state = newest_checkpoint(run_dir)
    if not checkpointing or recoveries_left <= 0:
        why = "it writes no checkpoint to rebuild it from (train.checkpoint_every=0)" if not checkpointing else \
            "train.max_recoveries rebuilds from a checkpoint were used up"
        raise StateLost(f"{lost}; the run cannot go on without it: {why}", lost.actor) from lost
    back_to = state["version"] if state is not None else 0
    log.warning("%s; rebuilding the learner group and buffer from %s, %d rebuild(s) left after this", lost,
                f"{checkpoint} (version {back_to})" if checkpoint is not None else
                "the initial policy (no checkpoint was written yet: the run starts over)", recoveries_left - 1)
    try:  # the dead run's buffer, if it lives, records the groups it held: they were generated after the checkpoint
        ray.get(actors.buffer.close.remote(version, f"rolled back to the checkpoint of version {back_to}"),
                timeout=CLOSE_TIMEOUT_S)
    except RayError as e:
        log.warning("the buffer could not record the groups it held (%s): they are regenerated, not logged",
                    first_line(e))
    if samples_path is not None:  # the old buffer wrote its last part (or is hung, and killed next)
        set_aside_later_samples(samples_path, state["log_parts"] if state is not None else 0, back_to)
    actors.rebuild_state_holders()
    setup_learners(actors.learners)
    if checkpoint is not None:
        load_learners(actors, checkpoint, state)
    return checkpoint, state
