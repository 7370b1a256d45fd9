"""What a filtered search keeps: images of some labels, some collections, created in a time range.

`Filter` is the one representation both backends read: Annoy's searcher turns it into a boolean
mask over per-item `Attributes` (categorical codes, so a mask over 100,000 items is a few integer
comparisons), Milvus into a filter expression over the scalar fields stored beside each vector.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np

COLLECTION = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_collection(name) -> str | None:
    """A collection name as given at ingest or search: None, or 1-64 of A-Z a-z 0-9 _ . -"""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not COLLECTION.fullmatch(name):
        raise ValueError("a collection is 1 to 64 letters, digits, '_', '.' or '-'")
    return name


@dataclass(frozen=True)
class Filter:
    labels: frozenset[str] | None = None  # None: any label
    collections: frozenset[str] | None = None
    created_after: float | None = None  # seconds since the epoch, inclusive
    created_before: float | None = None  # exclusive

    @classmethod
    def parse(cls, collection=None, where: dict | None = None) -> "Filter | None":
        """From the API's `collection` and `filter` {label, collection, created_after,
        created_before} (a label or collection may be one string or a list; times are epoch
        seconds or ISO 8601). None when nothing is filtered. ValueError on bad input."""
        where = {} if where is None else where
        if not isinstance(where, dict):
            raise ValueError("filter must be an object")
        unknown = set(where) - {"label", "collection", "created_after", "created_before"}
        if unknown:
            raise ValueError(f"unknown filter field(s): {', '.join(sorted(unknown))}")
        collections = _names(where.get("collection"), "collection", check_collection)
        collection = check_collection(collection)
        if collection is not None:
            collections = frozenset({collection}) if collections is None else collections & {collection}
        f = cls(_names(where.get("label"), "label", _check_label), collections,
                _time(where.get("created_after"), "created_after"), _time(where.get("created_before"), "created_before"))
        return None if f == cls() else f

    def mask(self, attrs: "Attributes") -> np.ndarray:
        keep = np.ones(len(attrs), bool)
        if self.labels is not None:
            keep &= attrs.labels.isin(self.labels)
        if self.collections is not None:
            keep &= attrs.collections.isin(self.collections)
        if self.created_after is not None:
            keep &= attrs.created_at >= self.created_after
        if self.created_before is not None:
            keep &= attrs.created_at < self.created_before
        return keep

    def matches(self, record: dict) -> bool:
        return bool(self.mask(Attributes.of([record]))[0])

    def expression(self) -> str:
        """The same filter as a Milvus boolean expression (JSON string literals are Milvus ones)."""
        terms = []
        if self.labels is not None:
            terms.append(f"label in {json.dumps(sorted(self.labels))}")
        if self.collections is not None:
            terms.append(f"collection in {json.dumps(sorted(self.collections))}")
        if self.created_after is not None:
            terms.append(f"created_at >= {self.created_after!r}")
        if self.created_before is not None:
            terms.append(f"created_at < {self.created_before!r}")
        return " and ".join(terms)


def _check_label(label) -> str:
    if not isinstance(label, str) or not 0 < len(label) <= 200:
        raise ValueError("a label is a string of 1 to 200 characters")
    return label


def _names(value, what: str, check) -> frozenset[str] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > 100:
        raise ValueError(f"filter {what}: give one name or a list of 1 to 100")
    return frozenset(v for v in map(check, values) if v is not None)


def _time(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)  # an int beyond a float: OverflowError
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):  # OverflowError, OSError: beyond the platform's times
            pass
    raise ValueError(f"filter {what} must be epoch seconds or an ISO 8601 time")


class Column:
    """A categorical column: an int32 code per item (-1: none) and the names the codes stand for."""

    def __init__(self, codes: np.ndarray, names: list[str]):
        self.codes, self.names = np.asarray(codes, np.int32), list(names)
        self._code = {n: i for i, n in enumerate(self.names)}

    @classmethod
    def of(cls, values: list[str | None]) -> "Column":
        code: dict[str, int] = {}
        codes = [-1 if v is None else code.setdefault(v, len(code)) for v in values]
        return cls(np.array(codes, np.int32), list(code))

    def isin(self, names) -> np.ndarray:
        wanted = [self._code[n] for n in names if n in self._code]
        return np.isin(self.codes, wanted) if wanted else np.zeros(len(self.codes), bool)


@dataclass
class Attributes:
    """The filterable fields of N items, aligned with an index's items."""
    labels: Column
    collections: Column
    created_at: np.ndarray  # float64 epoch seconds; NaN where unknown (never matches a range)

    def __len__(self) -> int:
        return len(self.created_at)

    @classmethod
    def of(cls, records: list[dict | None]) -> "Attributes":
        records = [r or {} for r in records]
        created = [r.get("created_at") for r in records]
        return cls(Column.of([r.get("label") for r in records]), Column.of([r.get("collection") for r in records]),
                   np.array([np.nan if c is None else c for c in created], np.float64))

    def save(self, path) -> None:
        with open(path, "wb") as f:
            np.savez(f, label_codes=self.labels.codes, label_names=np.array(self.labels.names, dtype=str),
                     collection_codes=self.collections.codes,
                     collection_names=np.array(self.collections.names, dtype=str), created_at=self.created_at)

    @classmethod
    def load(cls, path) -> "Attributes":
        with np.load(path, allow_pickle=False) as z:
            return cls(Column(z["label_codes"], z["label_names"].tolist()),
                       Column(z["collection_codes"], z["collection_names"].tolist()), z["created_at"])
