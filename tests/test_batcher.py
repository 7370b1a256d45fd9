"""Dynamic batching, without a model: many concurrent callers share model calls and get their own slice."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from modelserver.batcher import Batcher


class Recorder:
    def __init__(self, delay_s=0.0, fail=False):
        self.sizes, self.delay_s, self.fail = [], delay_s, fail
        self.lock = threading.Lock()

    def __call__(self, images):
        with self.lock:
            self.sizes.append(len(images))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return {"sum": images.reshape(len(images), -1).sum(axis=1), "first": images[:, 0]}


def test_concurrent_single_requests_are_batched_and_answered_correctly():
    run = Recorder(delay_s=0.02)
    batcher = Batcher(run, max_batch=8, timeout_s=0.005)
    inputs = [np.full((1, 2, 2), i, dtype=np.int64) for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher.submit, inputs))
    batcher.close()
    for i, result in enumerate(results):
        assert result["sum"].tolist() == [4 * i] and result["first"].shape == (1, 2)
    assert sum(run.sizes) == 64 and max(run.sizes) <= 8
    assert len(run.sizes) < 32, f"expected batching, got batch sizes {run.sizes}"


def test_large_request_runs_alone_in_chunks():
    run = Recorder()
    batcher = Batcher(run, max_batch=4)
    out = batcher.submit(np.arange(10)[:, None, None] * np.ones((10, 1, 1), dtype=np.int64))
    batcher.close()
    assert out["sum"].tolist() == list(range(10))
    assert run.sizes == [4, 4, 2]


def test_a_request_that_does_not_fit_starts_the_next_batch():
    run = Recorder(delay_s=0.05)
    batcher = Batcher(run, max_batch=4, timeout_s=0.05)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, np.ones((n, 1), dtype=np.int64)) for n in (3, 3, 1)]
        sizes = [len(f.result()["sum"]) for f in futures]
    batcher.close()
    assert sizes == [3, 3, 1] and max(run.sizes) <= 4 and sum(run.sizes) == 7


def test_model_failure_reaches_every_caller_and_the_batcher_keeps_running():
    run = Recorder(delay_s=0.01, fail=True)
    batcher = Batcher(run, max_batch=8)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, np.ones((1, 1), dtype=np.int64)) for _ in range(4)]
        for f in futures:
            with pytest.raises(RuntimeError, match="exploded"):
                f.result()
    run.fail = False
    assert batcher.submit(np.ones((2, 1), dtype=np.int64))["sum"].tolist() == [1, 1]
    batcher.close()
