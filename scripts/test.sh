#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: set up, make sure Redis answers, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The tests need a real Redis on 127.0.0.1:6379 (VSEARCH_TEST_REDIS_URL to use another), RabbitMQ on
# 127.0.0.1:5672 with `rabbitmqctl` (VSEARCH_TEST_RABBITMQ_URL), and `redis-server` for a local cluster.
if ! .venv/bin/python -c "import redis; redis.Redis(socket_timeout=2).ping()" 2>/dev/null; then
    echo "test: starting redis-server on 127.0.0.1:6379" >&2
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    sleep 1
fi
exec .venv/bin/python -m pytest "$@"
