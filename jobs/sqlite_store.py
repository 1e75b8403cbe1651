"""The default job store: one SQLite file (WAL) under DATA_DIR, for a single replica."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from jobs.store import JobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, finished REAL, options TEXT NOT NULL, files TEXT NOT NULL,
    error TEXT, attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
"""
_JSON_FIELDS = ("files", "options")


class SQLiteJobStore(JobStore):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection shared by the event loop and worker threads

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def insert(self, job_id: str, kind: str, options: dict, files: list[dict]) -> None:
        now = time.time()
        self._q(
            "INSERT INTO jobs (id, kind, state, created, updated, options, files) VALUES (?,?,?,?,?,?,?)",
            (job_id, kind, "queued", now, now, json.dumps(options), json.dumps(files)),
        )

    def get(self, job_id: str) -> dict | None:
        rows = self._q("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = dict(rows[0])
        for k in _JSON_FIELDS:
            job[k] = json.loads(job[k])
        return job

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        for k in _JSON_FIELDS:
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._q(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def ids(self, states: tuple[str, ...]) -> list[str]:
        marks = ",".join("?" * len(states))
        return [r["id"] for r in self._q(f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created", states)]

    def count_active(self) -> int:
        return self._q("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running')")[0][0]

    def expired(self, before: float) -> list[str]:
        return [r["id"] for r in self._q("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ?", (before,))]

    def delete(self, job_id: str) -> None:
        self._q("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._q("DELETE FROM job_events WHERE job_id = ?", (job_id,))

    def recent(self, limit: int = 50) -> list[dict]:
        rows = self._q("SELECT id FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [j for r in rows if (j := self.get(r["id"]))]

    def append_event(self, job_id: str, event: dict) -> int:
        with self._lock:
            cur = self.db.execute("INSERT INTO job_events (job_id, data) VALUES (?, ?)", (job_id, json.dumps(event)))
            return int(cur.lastrowid or 0)

    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict]]:
        rows = self._q("SELECT id, data FROM job_events WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after))
        return [(r["id"], json.loads(r["data"])) for r in rows]

    def close(self) -> None:
        self.db.close()
