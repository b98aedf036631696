"""Full-state checkpoints of a run, written atomically, with a manifest that tells a whole one from a damaged one.

A checkpoint is a directory ``<run_dir>/checkpoints/step-<version, 8 digits>/`` holding

* ``deepspeed/`` — every learner rank's DeepSpeed checkpoint (tag ``policy``: model and optimizer state, ZeRO shards
  included; tag ``critic`` with GAE), each rank writing its own files;
* ``policy/`` — the policy as a Hugging Face checkpoint (``from_pretrained`` loads it), written by rank 0;
* ``state.json`` — the driver's state at that version (:meth:`rlsys.controller.Controller.checkpoint_state`);
* ``MANIFEST.json`` — format, version, and every other file's size and SHA-256, written last.

It is written into a hidden temporary directory beside it, every file fsynced, and renamed into place: a crash leaves
either the whole checkpoint or a hidden directory no reader looks at. :func:`latest_valid` checks manifests newest
first and names every checkpoint it skips and why (a truncated shard, a missing manifest), so a reader falls back to
the previous one. The newest ``train.keep_checkpoints`` are kept.

The learners write straight into the directory: on a multi-node cluster the run directory must be on storage every
learner node mounts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "MANIFEST.json"
STATE = "state.json"
PREFIX = "step-"


def checkpoint_name(version: int) -> str:
    return f"{PREFIX}{version:08d}"


@dataclass(frozen=True)
class Written:
    path: Path
    bytes: int
    seconds: float  # from begin() to the rename


class CheckpointDir:
    """The checkpoints of one run, under ``<run_dir>/checkpoints``, ``keep`` of them kept (the newest)."""

    def __init__(self, run_dir: str | Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self._started: dict[Path, float] = {}

    def begin(self, version: int) -> Path:
        """A fresh temporary directory for the checkpoint of ``version``, for the learners to write into."""
        tmp = self.root / f".{checkpoint_name(version)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier attempt
        tmp.mkdir(parents=True)
        self._started[tmp] = time.perf_counter()
        return tmp

    def commit(self, tmp: Path, version: int, state: dict) -> Written:
        """Add ``state`` (JSON) and the manifest to what the learners wrote into ``tmp``, fsync it all, rename it
        into place and drop the checkpoints beyond the newest ``keep``."""
        (tmp / STATE).write_text(json.dumps(state, indent=1, allow_nan=False))
        files = {str(p.relative_to(tmp)): _digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "version": version, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for p in [*tmp.rglob("*"), tmp]:
            _fsync(p)
        final = self.root / checkpoint_name(version)
        if final.exists():  # an earlier checkpoint of the same version (a run continued in the same directory)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(self.root)
        self._prune()
        size = sum(f["bytes"] for f in files.values())
        return Written(final, size, time.perf_counter() - self._started.pop(tmp, time.perf_counter()))

    def _prune(self) -> None:
        for old in checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def checkpoints(root: str | Path) -> list[Path]:
    """The checkpoint directories under ``root``, oldest first (hidden temporary ones left out)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted (no manifest, an unknown format, a file missing, of another
    size or with another SHA-256 than the manifest says), or None if it is whole."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files, fmt = manifest["files"], manifest["format"]
    except FileNotFoundError:
        return f"{path.name}: no {MANIFEST} (written last: the checkpoint was not finished)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path.name}: {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if fmt != FORMAT:
        return f"{path.name}: checkpoint format {fmt!r}, this rlsys reads format {FORMAT}"
    for rel, expected in files.items():
        f = path / rel
        if not f.is_file():
            return f"{path.name}: {rel} is missing"
        if f.stat().st_size != expected["bytes"]:
            return f"{path.name}: {rel} has {f.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if _digest(f)["sha256"] != expected["sha256"]:
            return f"{path.name}: {rel} does not match its SHA-256 in the manifest"
    return None


def latest_valid(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest whole checkpoint under ``root`` (None if there is none), and why each newer one was skipped."""
    skipped = []
    for path in reversed(checkpoints(root)):
        problem = verify(path)
        if problem is None:
            return path, skipped
        skipped.append(problem)
    return None, skipped


def export_policy(state: dict, init_dir: str | Path, out: str | Path) -> None:
    """Write weights ``state`` ({name: numpy array}, as :meth:`DeepSpeedPolicy.full_state_dict` returns them) as a
    Hugging Face checkpoint at ``out``, with the config and tokenizer of the initial checkpoint ``init_dir``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlsys.engines.generation import tensors_from_numpy

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(init_dir))
    model.load_state_dict(tensors_from_numpy(state))
    if (Path(init_dir) / "generation_config.json").is_file():  # its end tokens (e.g. <|im_end|>) with it
        model.generation_config = GenerationConfig.from_pretrained(init_dir)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(init_dir).save_pretrained(out)


def _digest(path: Path, chunk: int = 1 << 22) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
