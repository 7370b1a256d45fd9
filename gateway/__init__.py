"""The Flask gateway: REST API under /api/v1, a web page at /. Serve with
`gunicorn -c python:gateway.gunicorn_conf 'gateway:create_app()'` (as `vsearch up` does); the config file
enables Prometheus multiprocess metrics."""
from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, g, request

from services.config import Settings
from services.process import configure_process


def create_app(test_config: dict | None = None) -> Flask:
    configure_process()  # the gateway process's entry point (gunicorn calls this)
    app = Flask(__name__)
    settings = (test_config or {}).get("SETTINGS") or Settings.from_env()
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_upload_mb * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.config.update(test_config or {})

    from gateway import auth, errors, limits, metrics, resources
    errors.init_app(app)
    resources.init_app(app)
    metrics.init_app(app)
    auth.init_app(app)
    limits.init_app(app)

    from gateway import api_duplicates, api_images, api_jobs, api_search, health, openapi, web
    for module in (api_duplicates, api_images, api_jobs, api_search, health, openapi):
        app.register_blueprint(module.bp)
    app.register_blueprint(web.bp)

    @app.before_request
    def _start():
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        logging.getLogger("gateway.access").info(
            "%s %s %s %.1fms rid=%s", request.method, request.path, response.status_code,
            (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, g.get("request_id"))
        return response

    return app
