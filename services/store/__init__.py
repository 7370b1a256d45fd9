"""Redis as the system of record: image metadata, jobs and the published index pointer; each image's
vector, layouts and keypoints in segment files on the data volume (`segments`), located from Redis.

Key layout, all under the prefix `p` (Settings.redis_prefix):

    p:image:<id>              hash    metadata (IMAGE_FIELDS); id = hex SHA-256 of the original bytes;
                                      and `vec:<model_key>`: where its vector, layouts and keypoints are
    p:added:<model_key>       zset    image id scored by seq: the log of vector writes
    p:deleted                 zset    deleted image id scored by seq
    p:seq                     string  one counter for vector writes and deletions (see below)
    p:models                  set     model keys that have vectors
    p:segments                string  the last segment file number given to a writer (segments.py)
    p:jobs                    zset    job ids by creation time, newest MAX_LISTED_JOBS kept
    p:job:<id>                hash    job state and counters
    p:job:<id>:errors         list    JSON {"item", "error"}, the first MAX_JOB_ERRORS kept
    p:job:<id>:seen           set     item keys already counted, so a retried item counts once
    p:job:<id>:near           list    JSON {"item", "id", "near_duplicate_of"}, the first 1000
    p:job:<id>:spec|:chunks   string, hash   what the job was sent as (chunk number -> items),
                                      kept until it ends for worker.watchdog
    p:jobs:active             set     ids of jobs not ended yet
    p:index:<model_key>       hash    published index: version, path, count, dim, size, built_at,
                                      max_seq, n_trees
    p:index:<model_key>:builds|:dirty|:lock   build numbers, pending request, builder lock
    p:index:<model_key>:building              a request taken by a builder, until its build ends
                                              (left behind by a builder that died: taken again)
    p:dups:...                duplicate pairs, groups and decisions (duplicates.py, DuplicateStore)

`p:seq` is the clock of the index: a build records the seq it started from (max_seq); vectors
added and ids deleted after it are exactly the log entries scored above it. A searcher polls
that one counter per query to know whether anything changed.

Multi-key updates are Lua scripts, atomic on the server, that name every key they touch. On a
Redis Cluster (`redis+cluster://`) `p` is wrapped in a hash tag (`{vsearch:}image:<id>`), so all
keys of a deployment share one slot and every script and transaction stays legal there
(services/store/connection.py).
"""
from __future__ import annotations

from pathlib import Path

from redis.cluster import RedisCluster

from services.store.common import image_id
from services.store.connection import connect, decodes_responses, key_prefix, script_factory
from services.store.duplicates import DuplicateStore
from services.store.images import IMAGE_FIELDS, STATUSES, ImageRecords, check_label
from services.store.index_state import IndexState
from services.store.jobs import JOB_TTL_S, MAX_JOB_ERRORS, MAX_LISTED_JOBS, JobStore
from services.store.segments import Segments
from services.store.vectors import VectorStore

__all__ = ["Store", "DuplicateStore", "check_label", "image_id", "IMAGE_FIELDS", "STATUSES", "JOB_TTL_S",
           "MAX_JOB_ERRORS", "MAX_LISTED_JOBS"]


class Store(ImageRecords, VectorStore, JobStore, IndexState):
    """One Redis client and key prefix; each part (images, vectors, jobs, index state) lives in its
    own module of this package and adds its methods and Lua scripts here."""

    def __init__(self, client, prefix: str = "vsearch:", vector_dir: Path | None = None):
        """`client`: a redis.Redis or a redis.cluster.RedisCluster; `vector_dir`: the segment files
        (Settings.vector_dir, shared by every host of the deployment); without it the store holds
        records only, and reading or writing vectors raises RuntimeError."""
        if decodes_responses(client):
            raise ValueError("Store needs a Redis client with decode_responses=False (vectors are bytes)")
        self.redis = client
        self.cluster = isinstance(client, RedisCluster)
        self.prefix = key_prefix(prefix, self.cluster)
        self.vector_dir = None if vector_dir is None else Path(vector_dir)
        self._segments = None if vector_dir is None else Segments(vector_dir, self._new_segment)
        script = script_factory(client)
        for part in (ImageRecords, VectorStore, JobStore, IndexState):
            part._register_scripts(self, script)

    def _new_segment(self) -> int:
        return self.redis.incr(self.key("segments"))

    @property
    def segments(self) -> Segments:
        if self._segments is None:
            raise RuntimeError("this Store was made without a vector_dir: it holds no vectors")
        return self._segments

    @classmethod
    def from_settings(cls, settings, **redis_kwargs) -> "Store":
        # Explicit timeouts: a stuck Redis must fail a request, not hang a gateway thread.
        kwargs = dict(socket_timeout=5.0, socket_connect_timeout=5.0, health_check_interval=30)
        return cls(connect(settings.redis_url, **(kwargs | redis_kwargs)), settings.redis_prefix, settings.vector_dir)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)
