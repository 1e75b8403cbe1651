"""Jobs that survive restarts: a store (jobs/store.py interface; SQLite by default), the manager that runs
them (jobs/manager.py), and each job's event log (page-by-page progress)."""

from jobs.manager import JobManager
from jobs.store import ACTIVE, FINAL, JobStore

__all__ = ["ACTIVE", "FINAL", "JobManager", "JobStore"]
