"""Connecting the store: one Redis, or a Redis Cluster when the URL says `redis+cluster://`.

On a cluster, every key of a deployment carries one hash tag (its prefix in braces), so each Lua
script and transaction touches one slot: the records live on one primary (and its replicas), the
cluster gives them failover, and other deployments sharing it spread over the other slots. The
arithmetic of why one slot carries a deployment is in docs/scaling.md.
"""
from __future__ import annotations

import redis
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# What a dropped or failing-over record store raises: transient, the task comes back later.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
               redis.exceptions.TryAgainError, redis.exceptions.SlotNotCoveredError,
               redis.exceptions.ReadOnlyError)  # a former primary back as a replica


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def connect(url: str, **kwargs) -> redis.Redis | RedisCluster:
    """A client for `url`. Cluster: any node's address; the client learns the others."""
    scheme, rest = url.split("://", 1)
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def key_prefix(prefix: str, cluster: bool) -> str:
    """The prefix every record key starts with: on a cluster, a hash tag unless it holds one
    (Redis hashes the text between the first `{` and the next `}`, when that is not empty)."""
    if not cluster or _has_hash_tag(prefix):
        return prefix
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"on a Redis Cluster the key prefix {prefix!r} needs no braces, or a hash tag ({{...}})")
    return "{" + prefix + "}"


def _has_hash_tag(text: str) -> bool:
    start = text.find("{")
    return start >= 0 and text.find("}", start + 1) > start + 1


class EvalScript:
    """A Lua script sent whole (EVAL) rather than by digest: a cluster pipeline cannot load a script
    that a node is missing (a node just promoted after a failover, say), and EVAL needs no loading."""

    def __init__(self, client: RedisCluster, text: str):
        self.client, self.text = client, text

    def __call__(self, keys=(), args=(), client=None):
        return (client or self.client).execute_command("EVAL", self.text, len(keys), *keys, *args)


def script_factory(client):
    return (lambda text: EvalScript(client, text)) if isinstance(client, RedisCluster) else client.register_script


def decodes_responses(client) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_connection_kwargs().get("decode_responses"))
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))
