"""The Milvus backend: every vector in a Milvus collection, inserted and deleted as it happens.

One Milvus collection per deployment and model key (`collection_name`), made on the first insert:
the image id as primary key, the vector (COSINE, HNSW), and the fields filters select on, with the
image's `collection` as partition key (a search within one collection reads only its partitions).
Nothing is ever rebuilt. Inserts are upserts, so a retried ingest chunk changes nothing.

Searches ask for Strong consistency: an image is searchable as soon as its worker's insert returns,
from any gateway. `VSEARCH_MILVUS_URI` is a Milvus server (standalone or cluster:
`http://host:19530`); a path ending in `.db` runs Milvus Lite inside the process, for one process
only (tests and the benchmark start `milvus-lite server` instead, which every process can share).
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from services.index.errors import IndexUnavailable
from services.index.filters import Filter
from services.index.query import best_per_image, single_query, stored_vector
from services.store import Store

logger = logging.getLogger(__name__)

HNSW = {"M": 16, "efConstruction": 200}
EF_MIN = 64  # HNSW's search list: at least this, and at least the number of results asked for
INSERT_BATCH = 500


def collection_name(prefix: str, model_key: str) -> str:
    """Milvus names allow letters, digits and '_' and must not start with a digit."""
    return "_" + re.sub(r"[^A-Za-z0-9_]", "_", prefix + model_key)


class MilvusIndex:
    """The index of one model key in Milvus, with the Annoy searcher's methods."""

    name = "milvus"
    builds = False

    def __init__(self, store: Store, model_key: str, uri: str):
        self.store, self.model_key, self.uri = store, model_key, uri
        self.collection = collection_name(store.prefix, model_key)
        self.last_error: str | None = None
        self._client: MilvusClient | None = None
        self._ready = False
        self._dim_value: int | None = None
        self._lock = threading.RLock()

    @property
    def client(self) -> MilvusClient:
        """Connected on first use, so that a process starts while Milvus is down."""
        if self._client is None:
            with self._lock, self._reachable():
                if self._client is None:
                    self._client = MilvusClient(uri=self.uri)
        return self._client

    @contextmanager
    def _reachable(self):
        try:
            yield
        except MilvusException as e:
            raise IndexUnavailable(f"Milvus at {self.uri}: {e}") from e

    # -- writes ---------------------------------------------------------------------------------
    def add(self, image_ids: list[str], vectors, records: list[dict | None]) -> None:
        """Insert (or replace) the vectors of images with their records' filter fields."""
        if not image_ids:
            return
        vectors = np.asarray(vectors, np.float32)
        with self._reachable():
            self._upsert(image_ids, vectors, records)
        # A delete that ran between the store write and this insert found nothing here to remove.
        gone = [iid for iid, dead in zip(image_ids, self.store.deleted_among(image_ids)) if dead]
        self.remove(gone)

    def _upsert(self, image_ids: list[str], vectors: np.ndarray, records: list[dict | None]) -> None:
        self._ensure(vectors.shape[1])
        rows = [{"id": iid, "vector": v.tolist(), "label": (r or {}).get("label") or "",
                 "collection": (r or {}).get("collection") or "", "created_at": float((r or {}).get("created_at") or 0)}
                for iid, v, r in zip(image_ids, vectors, records, strict=True)]
        for i in range(0, len(rows), INSERT_BATCH):
            self.client.upsert(self.collection, rows[i:i + INSERT_BATCH])

    def remove(self, image_ids: list[str]) -> None:
        with self._reachable():
            if image_ids and self._exists():
                self.client.delete(self.collection, ids=list(image_ids))

    # -- reads ----------------------------------------------------------------------------------
    def search(self, vector, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]:
        return self.search_many(single_query(vector, k), k, where=where)[0]

    def search_many(self, vectors, k: int = 10, effort_k: int | None = None,
                    where: Filter | None = None) -> list[list[tuple[str, float]]]:
        queries = np.asarray(vectors, np.float32)
        norms = np.linalg.norm(queries, axis=1) if queries.size else np.zeros(len(queries))
        valid = (norms > 0) & np.isfinite(norms)
        with self._reachable():
            if not valid.any() or not self._exists():
                return [[] for _ in queries]
            dim = self._dim()
            if queries.shape[1] != dim:
                raise ValueError(f"query has {queries.shape[1]} dimensions, the index {dim}")
            found = self.client.search(
                self.collection, data=queries[valid].tolist(), limit=k, filter=where.expression() if where else "",
                output_fields=["id"], search_params={"metric_type": "COSINE", "params": {"ef": max(EF_MIN, k)}},
                consistency_level="Strong")
        answers = iter(found)
        return [[(hit["id"], min(1.0, max(-1.0, float(hit["distance"])))) for hit in next(answers)] if ok else []
                for ok in valid]

    def shortlist(self, views, n: int, effort_k: int | None = None,
                  where: Filter | None = None) -> list[tuple[str, float]]:
        return best_per_image(self.search_many(np.unique(np.asarray(views, np.float32), axis=0), n, where=where), n)

    def search_by_id(self, image_id: str, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]:
        return self.search(stored_vector(self.store, self.model_key, image_id), k, where)

    @property
    def version(self) -> int:
        return 0  # nothing is ever built: there are no versions

    def status(self) -> dict:
        try:
            with self._reachable():
                count = self.client.get_collection_stats(self.collection)["row_count"] if self._exists() else 0
            self.last_error = None
        except IndexUnavailable as e:
            count, self.last_error = 0, str(e)
        return {"backend": self.name, "version": 0, "count": count, "built_at": None, "fresh": 0,
                "deleted_pending": 0, "pending": 0, "error": self.last_error}

    # -- the collection -------------------------------------------------------------------------
    def _exists(self) -> bool:
        if not self._ready:
            self._ready = self.client.has_collection(self.collection)
        return self._ready

    def _dim(self) -> int:
        if self._dim_value is None:
            fields = self.client.describe_collection(self.collection)["fields"]
            self._dim_value = int(next(f["params"]["dim"] for f in fields if f["name"] == "vector"))
        return self._dim_value

    def _ensure(self, dim: int) -> None:
        with self._lock:
            if self._exists():
                return
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("collection", DataType.VARCHAR, max_length=64, is_partition_key=True)
            schema.add_field("label", DataType.VARCHAR, max_length=800)  # 200 characters of UTF-8
            schema.add_field("created_at", DataType.DOUBLE)
            index = self.client.prepare_index_params()
            index.add_index("vector", index_type="HNSW", metric_type="COSINE", params=HNSW)
            try:
                self.client.create_collection(self.collection, schema=schema, index_params=index,
                                              consistency_level="Strong")
            except MilvusException:
                if not self.client.has_collection(self.collection):  # not a race with another worker
                    raise
            self._ready = True
            logger.info("milvus collection %s (dim %d) ready", self.collection, dim)
