#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv with everything the project runs and tests with.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: the CPU wheel lies on local disk; anything else would pull a CUDA build.
$PIP install "torch==2.13.0"
$PIP install -e '.[model,export,larger-models,samples,local,eval,dev,milvus]'
# Its declared dependency is the full `tensorflow` (CUDA) package; tensorflow-cpu runs the same code.
$PIP install --no-deps "tensorflow-serving-api==2.21.0"
# Browser tests drive Debian's Chromium headless.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "setup: could not install chromium; browser tests will be skipped" >&2
fi
echo "setup: done (.venv)"
