"""Prometheus metrics of the gateway at /metrics: request latency by route, search and index figures."""
from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest, multiprocess

REGISTRY = CollectorRegistry()
_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_SECONDS = Histogram("vsearch_http_request_seconds", "HTTP request latency", ["route", "method", "status"],
                            registry=REGISTRY, buckets=_BUCKETS)
SEARCH_SECONDS = Histogram("vsearch_search_seconds", "Search latency by query kind", ["kind"],
                           registry=REGISTRY, buckets=_BUCKETS)
SEARCH_MODEL_IMAGES = Histogram("vsearch_search_model_images",
                                "Images embedded in a query's model call (its views), by query kind", ["kind"],
                                registry=REGISTRY, buckets=(1, 2, 3, 4, 6, 8))
# Under gunicorn (gateway/gunicorn_conf.py) every process sets these; a scrape shows the latest value.
INDEX_ITEMS = Gauge("vsearch_index_items", "Vectors in the published Annoy index", registry=REGISTRY,
                    multiprocess_mode="mostrecent")
INDEX_VERSION = Gauge("vsearch_index_version", "Version of the index this process serves", registry=REGISTRY,
                      multiprocess_mode="mostrecent")
INDEX_FRESH = Gauge("vsearch_index_fresh_items", "Vectors searched exactly, not yet in Annoy", registry=REGISTRY,
                    multiprocess_mode="mostrecent")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    from gateway import resources
    try:
        status = resources.get().searcher.status()
        INDEX_ITEMS.set(status["count"])
        INDEX_VERSION.set(status["version"])
        INDEX_FRESH.set(status["fresh"])
    except Exception:  # metrics must answer even when Redis or the model server does not
        pass
    return Response(generate_latest(_scraped()), mimetype=CONTENT_TYPE_LATEST)


def _scraped() -> CollectorRegistry:
    """This process's metrics, or, under gunicorn with gateway/gunicorn_conf.py, every process's
    added up (each writes its values to files in PROMETHEUS_MULTIPROC_DIR)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def _clock():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in _METHODS else "other"  # bounded label values
        REQUEST_SECONDS.labels(route, method, str(response.status_code)).observe(
            time.perf_counter() - g.get("metrics_started", time.perf_counter()))
        return response
