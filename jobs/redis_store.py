"""The job store in Redis (JOB_BACKEND=redis): every replica reads and writes the same jobs.

Keys (prefix REDIS_PREFIX, default "ocr"):
    {p}:job:{id}          hash: the record, every field JSON-encoded
    {p}:jobs              sorted set: ids by creation time (recent, ids)
    {p}:active            set: ids of queued/running jobs (the 429 limit counts it)
    {p}:finished          sorted set: ids by finishing time (expiry)
    {p}:events:{id}       sorted set: "id json" members scored by their id; {p}:event_seq:{id} hands out the ids
    {p}:pages:{id}        set of "file:page" keys done, {p}:pages_per_file:{id} their count per file (exactly once)
A record changes in an optimistic transaction (WATCH), so replicas updating one job never lose a write, and
a deleted job is never brought back by a late update.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

import redis

from errors import InputError
from jobs.store import ACTIVE, JobStore


class RedisUnavailable(InputError):
    def __init__(self, error: Exception):
        message = f"the job queue cannot reach Redis ({type(error).__name__}: {error}); try again later"
        super().__init__(503, "jobs_unavailable", message, headers={"Retry-After": "10"})


def _redis_errors_are_503(method):
    """A Redis that is down answers 503 jobs_unavailable (errors.py renders it), not 500."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except redis.RedisError as e:
            raise RedisUnavailable(e) from e

    return wrapper


# Ids increase within a job even when replicas append at once; nothing is added to a deleted job.
_APPEND_EVENT = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local id = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], id, id .. ' ' .. ARGV[1])
return id
"""
# A page counts once however often it is processed; returns {newly added, done in its file, done in the job}.
_PAGE_DONE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0, 0} end
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
return {added, tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or 0), redis.call('SCARD', KEYS[1])}
"""


class RedisJobStore(JobStore):
    def __init__(self, url: str, prefix: str = "ocr"):
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, health_check_interval=30)
        self.p = prefix
        self.conflicts = 0  # optimistic transactions run again because another replica wrote first
        self._append = self.r.register_script(_APPEND_EVENT)
        self._page_done = self.r.register_script(_PAGE_DONE)

    def key(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    @_redis_errors_are_503
    def ping(self) -> None:
        self.r.ping()

    @_redis_errors_are_503
    def insert(self, job_id: str, kind: str, options: dict, files: list[dict]) -> None:
        now = time.time()
        record = {
            "id": job_id, "kind": kind, "state": "queued", "created": now, "updated": now, "finished": None,
            "options": options, "files": files, "error": None, "attempts": 0,
        }  # fmt: skip
        with self.r.pipeline(transaction=True) as tx:
            tx.hset(self.key("job", job_id), mapping={k: json.dumps(v) for k, v in record.items()})
            tx.zadd(self.key("jobs"), {job_id: now})
            tx.sadd(self.key("active"), job_id)
            tx.execute()

    @_redis_errors_are_503
    def get(self, job_id: str) -> dict | None:
        return self._decode(self.r.hgetall(self.key("job", job_id)))

    @staticmethod
    def _decode(raw: dict) -> dict | None:
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    @_redis_errors_are_503
    def update(self, job_id: str, **fields) -> None:
        self.mutate(job_id, lambda job: fields)

    @_redis_errors_are_503
    def mutate(self, job_id: str, change: Callable[[dict], dict | None]) -> dict | None:
        """Read-modify-write of one record: `change(job)` returns the fields to set (None: nothing). Runs again
        if another replica wrote the record meanwhile. Returns the new record, or None if there is no such job."""
        key = self.key("job", job_id)
        with self.r.pipeline(transaction=True) as tx:
            while True:
                try:
                    tx.watch(key)
                    job = self._decode(tx.hgetall(key))
                    fields = change(job) if job else None
                    if not fields:
                        tx.unwatch()
                        return job
                    fields = {**fields, "updated": time.time()}
                    tx.multi()
                    tx.hset(key, mapping={k: json.dumps(v) for k, v in fields.items()})
                    if "state" in fields:
                        if fields["state"] in ACTIVE:
                            tx.sadd(self.key("active"), job_id)
                        else:
                            tx.srem(self.key("active"), job_id)
                    if fields.get("finished"):
                        tx.zadd(self.key("finished"), {job_id: fields["finished"]})
                    tx.execute()
                    return {**job, **fields}
                except redis.WatchError:
                    self.conflicts += 1

    @_redis_errors_are_503
    def ids(self, states: tuple[str, ...]) -> list[str]:
        if set(states) <= set(ACTIVE):
            candidates = list(self.r.smembers(self.key("active")))
        else:
            candidates = self.r.zrange(self.key("jobs"), 0, -1)
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in candidates:
                pipe.hmget(self.key("job", job_id), ["state", "created"])
            rows = pipe.execute()
        found = [
            (json.loads(c), i) for i, (s, c) in zip(candidates, rows, strict=True) if s and json.loads(s) in states
        ]
        return [i for _, i in sorted(found)]

    @_redis_errors_are_503
    def count_active(self) -> int:
        return int(self.r.scard(self.key("active")))

    @_redis_errors_are_503
    def expired(self, before: float) -> list[str]:
        return list(self.r.zrangebyscore(self.key("finished"), "-inf", f"({before}"))

    @_redis_errors_are_503
    def delete(self, job_id: str) -> None:
        with self.r.pipeline(transaction=True) as tx:
            tx.delete(
                self.key("job", job_id), self.key("events", job_id), self.key("event_seq", job_id),
                self.key("pages", job_id), self.key("pages_per_file", job_id),
            )  # fmt: skip
            tx.zrem(self.key("jobs"), job_id)
            tx.zrem(self.key("finished"), job_id)
            tx.srem(self.key("active"), job_id)
            tx.execute()

    @_redis_errors_are_503
    def recent(self, limit: int = 50) -> list[dict]:
        ids = self.r.zrevrange(self.key("jobs"), 0, limit - 1)
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key("job", job_id))
            return [j for raw in pipe.execute() if (j := self._decode(raw))]

    @_redis_errors_are_503
    def append_event(self, job_id: str, event: dict) -> int:
        keys = [self.key("event_seq", job_id), self.key("events", job_id), self.key("job", job_id)]
        return int(self._append(keys=keys, args=[json.dumps(event)]))

    @_redis_errors_are_503
    def events(self, job_id: str, after: int = 0) -> list[tuple[int, dict]]:
        members = self.r.zrangebyscore(self.key("events", job_id), f"({after}", "+inf")
        out = []
        for m in members:
            event_id, data = m.split(" ", 1)
            out.append((int(event_id), json.loads(data)))
        return out

    @_redis_errors_are_503
    def page_done(self, job_id: str, file: int, page: int) -> tuple[bool, int, int]:
        """Count one finished page of a job exactly once: (newly counted, pages done in its file, in the job)."""
        keys = [self.key("pages", job_id), self.key("pages_per_file", job_id), self.key("job", job_id)]
        added, in_file, in_job = self._page_done(keys=keys, args=[f"{file}:{page}", str(file)])
        return bool(added), int(in_file), int(in_job)

    def close(self) -> None:
        self.r.close()
