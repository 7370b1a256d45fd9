"""What every part of the store shares: field decoding and the key of an image."""
from __future__ import annotations

import hashlib

def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode(raw: dict, types: dict) -> dict:
    out = {}
    for k, v in raw.items():
        k, v = k.decode(), v.decode()
        out[k] = types.get(k, str)(v)
    return out




def _pairs(fields: dict) -> list:
    return [x for k, v in fields.items() for x in (k, v)]
