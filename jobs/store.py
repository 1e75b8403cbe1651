"""The job store interface: job records (state, options, per-file progress) and each job's event log.

Backends: SQLite (jobs/sqlite_store.py, the default: one replica) and Redis (shared by replicas). A job
record is a dict with id, kind, state, created, updated, finished, options, files, error, attempts.
Events are dicts appended in order; each gets an id that increases within its job, so a reader can
resume after the last id it saw (server-sent events' Last-Event-ID).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")


class JobStore(ABC):
    @abstractmethod
    def insert(self, job_id: str, kind: str, options: dict, files: list[dict]) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> dict | None: ...

    @abstractmethod
    def update(self, job_id: str, **fields) -> None: ...

    @abstractmethod
    def ids(self, states: tuple[str, ...]) -> list[str]:
        """Ids of jobs in these states, oldest first."""

    @abstractmethod
    def count_active(self) -> int: ...

    @abstractmethod
    def expired(self, before: float) -> list[str]:
        """Ids of jobs that finished before `before` (epoch seconds)."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """The record and its events."""

    @abstractmethod
    def recent(self, limit: int = 50) -> list[dict]: ...

    @abstractmethod
    def append_event(self, job_id: str, event: dict) -> int:
        """Store one event of a job; returns its id (greater than every earlier id of that job)."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict]]:
        """(id, event) of the job's events with id > after, in order."""

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        pass
