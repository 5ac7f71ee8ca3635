"""The revocation set's interface (the Store boundary's third part): revoked token ids, tasks and agents,
each with an expiry and the caller it is charged to; a snapshot read per decision.

Every backend keeps:
  * a generation, +1 per change: `generation()` is one cheap read (LMDB: one key; Redis: one GET, or
    none while the pub/sub channel is live), and `current()` re-reads the whole set only when it moved;
  * bounds: at most `max_entries` live entries, at most `max_per_owner` charged to one caller; an entry
    that adds or lengthens nothing is free, a lapsed entry never takes a slot (writes sweep them first);
  * expiries: readers ignore entries past `expires_at` (0 = never).
`lift(kind, value)` removes an entry early (an operator's mistake undone); it frees its owner's share.
Errors: RevocationError (cannot read or write: callers fail closed), RevocationFullError (max_entries),
RevocationQuotaError (max_per_owner).
"""
from __future__ import annotations

import abc

from authz.errors import AuthzError

KINDS = ("token", "task", "agent")


class RevocationError(AuthzError):
    """The revocation set cannot be read or written."""

    code = "revocation_unavailable"


class RevocationFullError(RevocationError):
    """The revocation set holds its maximum number of live entries."""

    code = "revocation_set_full"


class RevocationQuotaError(RevocationFullError):
    """The caller holds its maximum share of the revocation set."""

    code = "revocation_quota_exceeded"


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a revocation's kind is one of {', '.join(KINDS)}, not {kind!r}")


def quota_error(owner: str, most: int) -> RevocationQuotaError:
    return RevocationQuotaError(f"`{owner}` holds its maximum of {most} revocation entries "
                                "(tokens.max_revocations_per_caller); they come free as they lapse")


def full_error(most: int) -> RevocationFullError:
    return RevocationFullError(f"the revocation set holds its maximum of {most} entries (tokens.max_revocations)")


class Revocations:
    """One snapshot of the revocation set: value -> expires_at (0 = never) per kind."""

    __slots__ = ("generation", "tokens", "tasks", "agents")

    def __init__(self, generation: int, tokens: dict, tasks: dict, agents: dict):
        self.generation, self.tokens, self.tasks, self.agents = generation, tokens, tasks, agents

    @staticmethod
    def _live(table: dict, value, now: float) -> bool:
        exp = table.get(value)
        return exp is not None and (exp == 0 or exp > now)

    def token_revoked(self, jti: str, now: float) -> bool:
        return self._live(self.tokens, jti, now)

    def task_revoked(self, task: str, now: float) -> bool:
        return self._live(self.tasks, task, now)

    def agent_revoked(self, agent: str, now: float) -> bool:
        return self._live(self.agents, agent, now)

    def __len__(self):
        return len(self.tokens) + len(self.tasks) + len(self.agents)


EMPTY = Revocations(0, {}, {}, {})


class RevocationSet(abc.ABC):
    """The deployment's revocation set (see the module docstring)."""

    @abc.abstractmethod
    def generation(self) -> int:
        """The set's generation now (one cheap read); RevocationError when it cannot be read."""

    @abc.abstractmethod
    def current(self) -> Revocations:
        """The set as of now: the generation read, the entries re-read only when it changed."""

    @abc.abstractmethod
    def revoke(self, kind: str, value: str, expires_at: float, max_entries: int, owner: str = "",
               max_per_owner: int = 0) -> int:
        """Add (or lengthen) one revocation charged to `owner`; `expires_at` 0 = never. Returns when the
        entry lapses (0 = never; in the past when it had lapsed already and nothing was stored)."""

    @abc.abstractmethod
    def lift(self, kind: str, value: str) -> bool:
        """Remove the entry (True if there was one); its owner's share comes free."""

    @abc.abstractmethod
    def held_by(self, owner: str) -> int:
        """How many entries are charged to `owner` (lapsed ones count until the next write sweeps them)."""

    @abc.abstractmethod
    def entries(self) -> list:
        """Every stored entry as (kind, value, revoked_at, expires_at), for tools and tests."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release it."""
