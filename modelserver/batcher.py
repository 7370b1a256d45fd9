"""Dynamic batching: many small concurrent requests become a few large model calls.

Callers block in `submit()`; one thread takes the first waiting request, folds in whatever else is
already queued, waits at most `timeout_s` for more while the batch is below `max_batch`, runs the
model once and hands each caller its slice of the outputs. While the model runs, new requests queue
up, so under load batches fill without any waiting at all.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class _Task:
    images: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, run: RunFn, max_batch: int = 32, timeout_s: float = 0.002, name: str = "batcher"):
        self._run = run
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._carry: _Task | None = None
        self.batches_run = 0
        self.images_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Runs `images` ([N, ...]) through the model, batched with other callers; blocks."""
        task = _Task(images)
        self._queue.put(task)
        return task.future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _next(self, timeout: float | None) -> _Task | None:
        if self._carry is not None:
            task, self._carry = self._carry, None
            return task
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _collect(self, first: _Task) -> list[_Task]:
        batch, size = [first], len(first.images)
        deadline = time.monotonic() + self.timeout_s
        while size < self.max_batch:
            try:
                task = self._next(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if task is None:  # close() while collecting: finish this batch, then stop
                self._queue.put(None)
                break
            if size + len(task.images) > self.max_batch:
                self._carry = task  # starts the next batch
                break
            batch.append(task)
            size += len(task.images)
        return batch

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch = [first] if len(first.images) >= self.max_batch else self._collect(first)
            self._execute(batch)

    def _execute(self, batch: list[_Task]) -> None:
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([t.images for t in batch])
            outputs = self._run_chunked(images)
        except Exception as exc:  # every caller of the batch learns why
            for task in batch:
                task.future.set_exception(exc)
            return
        start = 0
        for task in batch:
            stop = start + len(task.images)
            task.future.set_result({k: v[start:stop] for k, v in outputs.items()})
            start = stop

    def _run_chunked(self, images: np.ndarray) -> dict[str, np.ndarray]:
        # A single request larger than max_batch runs alone, in max_batch chunks.
        chunks = [self._run(images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        self.batches_run += len(chunks)
        self.images_run += len(images)
        if len(chunks) == 1:
            return chunks[0]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
