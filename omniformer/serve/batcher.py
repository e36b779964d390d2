"""Micro-batching: answer concurrent requests with one model call.

Requests put prepared items on an asyncio queue; one worker task takes what is queued, up to
``max_batch``, and runs the model in a thread (torch releases the GIL, so the event loop keeps
accepting and decoding requests meanwhile). Requests that arrive during a model call form
the next batch, so throughput grows with concurrency without any fixed delay.

Waiting for stragglers (up to ``max_wait_ms``) only happens while a request has been admitted
(``reserve()``) but is still being decoded: then another item is known to be on its way and a
few milliseconds buy a bigger batch. A lone request never waits: with nothing in preparation,
the batch runs at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

log = logging.getLogger(__name__)

AnswerFn = Callable[[list[Any], int], Sequence[Any]]


class Overloaded(RuntimeError):
    """The queue is full: the client should retry later (HTTP 503)."""


class BatcherStopped(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Job:
    item: Any
    top_k: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Group concurrent ``submit`` calls into batches for ``fn(items, top_k) -> results``.

    ``fn`` must return one result per item, in order. Items of one batch may ask for different
    ``top_k``: the batch runs with the largest and each result is cut to its own ``top_k``
    (so ``fn``'s results must be lists ordered best first).
    """

    def __init__(self, fn: AnswerFn, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: must be >= 0, got {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # (batch size, seconds) after every model call, for metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One thread: model calls run one at a time, each using all of torch's intra-op threads.
        self._executor: ThreadPoolExecutor | None = None
        self._preparing = 0  # requests admitted but not yet submitted (decoding their inputs)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniformer-model")
        self._task = asyncio.create_task(self._run(), name="omniformer-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:  # fail whatever is still queued rather than leave it hanging
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(BatcherStopped("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- requests ------------------------------------------------------------------------------

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """Announce a request that will ``submit`` soon (while its inputs are decoded)."""
        self._preparing += 1
        try:
            yield
        finally:
            self._preparing -= 1
            if self._changed is not None:
                self._changed.set()  # a waiting worker re-checks whether to keep waiting

    async def submit(self, item: Any, top_k: int) -> Any:
        if not self.running:
            raise BatcherStopped("the model worker is not running")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} questions are waiting; try again shortly")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(item, top_k, future))
        self._changed.set()
        return await future

    # -- worker --------------------------------------------------------------------------------

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= self.max_batch or self._preparing == 0 or remaining <= 0:
                break
            # No await between the checks above and this clear, so no signal can be missed.
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # Clients that gave up (cancelled futures) cost no model time.
            batch = [job for job in batch if not job.future.done()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._answer, batch)
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BatcherStopped("the server is shutting down"))
                raise
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), time.perf_counter() - start)
                except Exception:  # metrics must never stop the worker
                    log.exception("on_batch callback failed")
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result[: job.top_k] if isinstance(result, list) else result)

    def _answer(self, batch: list[_Job]) -> list[Any]:
        """Runs in the model thread. Never raises: failures become per-item exceptions."""
        top_k = max(job.top_k for job in batch)
        try:
            results = list(self.fn([job.item for job in batch], top_k))
            if len(results) != len(batch):
                raise RuntimeError(f"answer function returned {len(results)} results for {len(batch)} items")
            return results
        except Exception as batch_error:
            if len(batch) == 1:
                log.exception("model call failed")
                return [batch_error]
        # One bad item must not fail the others: retry one by one to isolate it.
        out: list[Any] = []
        for job in batch:
            try:
                out.append(list(self.fn([job.item], job.top_k))[0])
            except Exception as e:
                log.exception("model call failed")
                out.append(e)
        return out
