"""Jobs that survive restarts: a store (jobs/store.py interface; SQLite by default, Redis for replicas), the
manager that runs them (jobs/manager.py; jobs/distributed.py across replicas), and each job's event log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.manager import JobManager
from jobs.store import ACTIVE, FINAL, JobStore

if TYPE_CHECKING:
    from config import Settings
    from deepseek_ocr import OCREngine
    from documents import Renderer

__all__ = ["ACTIVE", "FINAL", "JobManager", "JobStore", "make_manager"]


def make_manager(settings: Settings, engine: OCREngine, renderer: Renderer) -> JobManager:
    """The manager of JOB_BACKEND: sqlite (this replica's jobs) or redis (jobs shared by replicas)."""
    if settings.job_backend == "redis":
        from jobs.distributed import DistributedJobManager

        return DistributedJobManager(settings, engine, renderer)
    return JobManager(settings, engine, renderer)
