"""Image records: metadata and status, one hash per image id."""
from __future__ import annotations

import time
from typing import Iterable, Iterator

from services.store.common import _decode, _pairs

IMAGE_FIELDS = ("source", "label", "collection", "width", "height", "format", "size_bytes", "created_at",
                "status", "model", "near_duplicate_of", "error")
STATUSES = ("pending", "indexed", "failed", "deleted")
_TYPES = {"width": int, "height": int, "size_bytes": int, "created_at": float}
MAX_LABEL_CHARS = 200


def check_label(label) -> str | None:
    """A label as stored: None, or a string of 1 to MAX_LABEL_CHARS characters that is valid
    UTF-8 (no lone surrogates). Raises ValueError otherwise; every route and task checks here."""
    if label is None or label == "":
        return None
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be a string of at most {MAX_LABEL_CHARS} characters")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("label must be valid Unicode text (it holds a lone surrogate)") from None
    return label

# A deleted image may be ingested again: it then starts over as a new record. Unless it was
# deleted after ARGV[2] (a seq; -1: no such check): the tombstone of a delete made while a job ran,
# which a redelivered chunk of that job must not undo (-1).
_CREATE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('EXISTS', KEYS[1]) == 1 and status ~= 'deleted' then return 0 end
if status then
  local deleted_at = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '-1')
  if tonumber(ARGV[2]) >= 0 and deleted_at > tonumber(ARGV[2]) then return -1 end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""
_CREATE_HASH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# -1: no such image; 0: deleted, or not changed.
_UPDATE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'deleted' then return 0 end
local n = tonumber(ARGV[1])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * n)) end
if #ARGV > 1 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
return 1
"""
# KEYS: image, deleted, seq, models, then per model key (ARGV[2..]) its log (`added`). The caller
# read the model keys first: if they changed since, -1 (read them and call again).
_DELETE_IMAGE = """
local models = redis.call('SMEMBERS', KEYS[4])
if #models ~= #ARGV - 1 then return -1 end
for _, model in ipairs(models) do
  local known = false
  for i = 2, #ARGV do known = known or ARGV[i] == model end
  if not known then return -1 end
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'deleted' then return 1 end
redis.call('HSET', KEYS[1], 'status', 'deleted')
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
for i = 2, #ARGV do
  redis.call('HDEL', KEYS[1], 'vec:' .. ARGV[i])
  redis.call('ZREM', KEYS[3 + i], ARGV[1])
end
return 1
"""


def _without_locations(raw: dict) -> dict:
    """The record's fields without where its vectors are (services/store/vectors.py)."""
    return {k: v for k, v in raw.items() if not k.startswith(b"vec:")}


class ImageRecords:
    def _register_scripts(self, script) -> None:
        self._create_image = script(_CREATE_IMAGE)
        self._create_hash = script(_CREATE_HASH)
        self._update_image = script(_UPDATE_IMAGE)
        self._delete_image = script(_DELETE_IMAGE)

    # -- images ---------------------------------------------------------------------------
    def create_image(self, image_id: str, **meta) -> bool:
        """Create the record; False (nothing changed) if it exists and is not deleted."""
        return self.create_images([(image_id, meta)])[0]

    def create_images(self, records: list[tuple[str, dict]], deleted_after: int | None = None) -> list[bool | None]:
        """create_image for many (image_id, meta) pairs in one round trip. With `deleted_after` (a
        seq, e.g. the job's when it was created), an image deleted since is not created again:
        None for it (True: created, False: exists)."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for image_id, meta in records:
            fields = {k: v for k, v in ({"status": "pending", "created_at": now} | meta).items() if v is not None}
            self._create_image(keys=[self.key("image", image_id), self.key("deleted")],
                               args=[image_id, -1 if deleted_after is None else deleted_after, *_pairs(fields)],
                               client=pipe)
        return [None if r < 0 else bool(r) for r in pipe.execute()]

    def iter_image_ids(self, batch: int = 1000) -> Iterator[list[str]]:
        """Every image id, in chunks (a SCAN: one created meanwhile may or may not be listed)."""
        start = self.key("image", "")
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in start) + "*"
        chunk = []
        for key in self.redis.scan_iter(match=pattern, count=batch):
            chunk.append(key.decode()[len(start):])
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def get_image(self, image_id: str) -> dict | None:
        return self.get_images([image_id])[0]

    def get_images(self, image_ids: Iterable[str]) -> list[dict | None]:
        """Records in the order asked (None where unknown), in one round trip."""
        image_ids = list(image_ids)
        pipe = self.redis.pipeline(transaction=False)
        for iid in image_ids:
            pipe.hgetall(self.key("image", iid))
        return [{"id": iid} | dict.fromkeys(IMAGE_FIELDS) | _decode(_without_locations(raw), _TYPES) if raw else None
                for iid, raw in zip(image_ids, pipe.execute())]

    def update_image(self, image_id: str, **fields) -> bool:
        """Set fields (None removes one). False if the image is deleted; KeyError if unknown."""
        return self.update_images([(image_id, fields)])[0]

    def update_images(self, updates: list[tuple[str, dict]]) -> list[bool]:
        """update_image for many (image_id, fields) pairs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for image_id, fields in updates:
            if fields.get("status") == "deleted":
                raise ValueError("use delete_image() to delete an image")
            if fields.get("status", "pending") not in STATUSES:
                raise ValueError(f"unknown status {fields['status']!r}")
            sets = {k: v for k, v in fields.items() if v is not None}
            dels = [k for k, v in fields.items() if v is None]
            self._update_image(keys=[self.key("image", image_id)], args=[len(sets), *_pairs(sets), *dels], client=pipe)
        results = pipe.execute()
        for (image_id, _), result in zip(updates, results):
            if result < 0:
                raise KeyError(image_id)
        return [bool(r) for r in results]

    def delete_image(self, image_id: str) -> bool:
        """Tombstone the record and drop its log entries and where its vectors, layouts and keypoints
        are (their records stay in the segment files, unreachable); False if unknown."""
        while True:
            models = self.model_keys()
            keys = [self.key("image", image_id), self.key("deleted"), self.key("seq"), self.key("models")]
            keys += [self.key("added", model_key) for model_key in models]
            result = self._delete_image(keys=keys, args=[image_id, *models])
            if result >= 0:
                return bool(result)
