"""The streaming buffer: scored prompt groups waiting for the learner, oldest policy version first."""

from __future__ import annotations

from dataclasses import dataclass

from rlsys.staleness import is_too_stale
from rlsys.types import Group


@dataclass(frozen=True)
class Take:
    """What one ``take`` did: the batch (None if fewer than asked were fresh enough) and what it dropped."""

    batch: list[Group] | None
    dropped: list[Group]
    depth_after: int


class GroupBuffer:
    """Oldest first: by policy version, then by the order the groups were admitted (``order``: the request id and
    the group's place in it), with the staleness drop applied at hand-out time. Admission order rather than arrival
    keeps a synchronous run's batches identical from run to run while reward calls finish in any order."""

    def __init__(self, max_staleness: int) -> None:
        self.max_staleness = max_staleness
        self._groups: list[tuple[int, tuple, Group]] = []  # (version, order, group), kept sorted
        self._arrivals = 0

    def put(self, groups: list[Group], order: int | None = None) -> None:
        """``order``: the request id the groups were admitted under (None: after every group so far)."""
        for i, g in enumerate(groups):
            self._groups.append((g.version, (self._arrivals if order is None else order, i), g))
        self._arrivals += 1
        self._groups.sort(key=lambda item: item[:2])

    def take(self, num_groups: int, learner_version: int) -> Take:
        """Drop every group too stale for ``learner_version``, then hand out the ``num_groups`` oldest, if there
        are that many; otherwise keep them and return ``batch=None``."""
        dropped = [g for v, _, g in self._groups if is_too_stale(v, learner_version, self.max_staleness)]
        if dropped:
            self._groups = [item for item in self._groups
                            if not is_too_stale(item[0], learner_version, self.max_staleness)]
        if len(self._groups) < num_groups:
            return Take(None, dropped, len(self._groups))
        batch = [g for _, _, g in self._groups[:num_groups]]
        self._groups = self._groups[num_groups:]
        return Take(batch, dropped, len(self._groups))

    def drain(self) -> list[Group]:
        """Remove and return every waiting group (at the end of a run)."""
        groups = [g for _, _, g in self._groups]
        self._groups = []
        return groups

    def __len__(self) -> int:
        return len(self._groups)
