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


def set_aside_later_samples(samples_path: Path, state: dict) -> None:
    """Move the sample-log parts written after the checkpoint of ``state`` out of the log (before a buffer opens
    it): their timeline is discarded and its prompts trained again (:func:`rlsys.samples_io.set_aside_parts`)."""
    if samples_path.is_dir():
        moved = set_aside_parts(samples_path, state["log_parts"], f"discarded-after-v{state['version']}")
        log.info("back at version %d: %d sample-log part(s) written after the checkpoint set aside", state["version"],
                 moved)


def load_learners(actors: ActorHandles, checkpoint: Path, state: dict) -> None:
    """Every learner rank loads its part of ``checkpoint``; raises :class:`ConfigError` if they end at another
    version than the checkpoint's state says."""
    versions = ray.get([learner.load_checkpoint.remote(str(checkpoint)) for learner in actors.learners])
    if set(versions) != {state["version"]}:
        raise ConfigError(f"{checkpoint}: the learner ranks restored versions {versions}, its state.json says "
                          f"{state['version']}")


def recover(actors: ActorHandles, run_dir: Path, samples_path: Path | None, lost: StateLost, version: int,
            recoveries_left: int) -> tuple[Path, dict]:
    """Rebuild the learner group, buffer and reference actor after ``lost`` (found at policy ``version``) from the
    run's newest valid checkpoint; returns it and its driver state for :meth:`Controller.restore`.

    Raises ``lost`` itself, with what was missing added, when there is no valid checkpoint (``train.checkpoint_every``
    was 0, or none was written yet) or no recovery is left (``train.max_recoveries``)."""
    checkpoint, state = newest_checkpoint(run_dir)
    if checkpoint is None or recoveries_left <= 0:
        why = "there is no valid checkpoint to rebuild it from (train.checkpoint_every)" if checkpoint is None else \
            "train.max_recoveries rebuilds from a checkpoint were used up"
        raise StateLost(f"{lost}; the run cannot go on without it: {why}", lost.actor) from lost
    log.warning("%s; rebuilding the learner group and buffer from %s (version %d), %d rebuild(s) left after this", lost,
                checkpoint, state["version"], recoveries_left - 1)
    try:  # the dead run's buffer, if it lives, records the groups it held: they were generated after the checkpoint
        ray.get(actors.buffer.close.remote(version, f"rolled back to the checkpoint of version {state['version']}"),
                timeout=CLOSE_TIMEOUT_S)
    except RayError as e:
        log.warning("the buffer could not record the groups it held (%s): they are regenerated, not logged",
                    first_line(e))
    if samples_path is not None:  # the old buffer wrote its last part (or is hung, and killed next)
        set_aside_later_samples(samples_path, state)
    actors.rebuild_state_holders()
    setup_learners(actors.learners)
    load_learners(actors, checkpoint, state)
    return checkpoint, state
