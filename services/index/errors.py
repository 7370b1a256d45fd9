"""What any index backend may raise to its callers."""


class IndexUnavailable(Exception):
    """The index service (Milvus) cannot be reached or refused a call: a 503 for the gateway, a
    retry for a worker's task."""
