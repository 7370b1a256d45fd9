"""Image records: metadata and status, one hash per image id."""
from __future__ import annotations

import time
from typing import Iterable

from services.store.common import _decode, _pairs

IMAGE_FIELDS = ("source", "label", "width", "height", "format", "size_bytes", "created_at",
                "status", "model", "near_duplicate_of", "error")
STATUSES = ("pending", "indexed", "failed", "deleted")
_TYPES = {"width": int, "height": int, "size_bytes": int, "created_at": float}

# A deleted image may be ingested again: it then starts over as a new record.
_CREATE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('EXISTS', KEYS[1]) == 1 and status ~= 'deleted' then return 0 end
if status then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
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
_DELETE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'deleted' then return 1 end
redis.call('HSET', KEYS[1], 'status', 'deleted')
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
for _, model in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('HDEL', ARGV[2] .. 'vectors:' .. model, ARGV[1])
  redis.call('ZREM', ARGV[2] .. 'added:' .. model, ARGV[1])
end
return 1
"""


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

    def create_images(self, records: list[tuple[str, dict]]) -> list[bool]:
        """create_image for many (image_id, meta) pairs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for image_id, meta in records:
            fields = {k: v for k, v in ({"status": "pending", "created_at": now} | meta).items() if v is not None}
            self._create_image(keys=[self.key("image", image_id), self.key("deleted")],
                               args=[image_id, *_pairs(fields)], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def get_image(self, image_id: str) -> dict | None:
        return self.get_images([image_id])[0]

    def get_images(self, image_ids: Iterable[str]) -> list[dict | None]:
        """Records in the order asked (None where unknown), in one round trip."""
        image_ids = list(image_ids)
        pipe = self.redis.pipeline(transaction=False)
        for iid in image_ids:
            pipe.hgetall(self.key("image", iid))
        return [{"id": iid} | dict.fromkeys(IMAGE_FIELDS) | _decode(raw, _TYPES) if raw else None
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
        """Tombstone the record and drop its vectors, layouts, keypoints and log entries; False if unknown."""
        keys = [self.key("image", image_id), self.key("deleted"), self.key("seq"), self.key("models")]
        deleted = bool(self._delete_image(keys=keys, args=[image_id, self.prefix]))
        if deleted:
            pipe = self.redis.pipeline(transaction=False)
            for model_key in self.model_keys():
                pipe.hdel(self.key("layouts", model_key), image_id)
            pipe.hdel(self.key("features"), image_id)
            pipe.execute()
        return deleted
