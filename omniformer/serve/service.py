"""What every task's side of the server shares: uploads decoded in a thread pool, one
micro-batcher over the predictor's batch function, readiness, and the batch metrics.

A task's service (``Task.service``) subclasses ``BatchedService`` and adds its routes
(``add_routes``), its warm-up (``warm_up``) and what ``GET /v1/model`` says (``info``); the
app (``serve.app``) only calls ``start``, ``stop``, ``running``, ``queued`` and those.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .batcher import BatcherStopped, MicroBatcher, Overloaded
from .uploads import ApiError

log = logging.getLogger(__name__)

WARM_UP_SECONDS = 1.0


def warm_up_seconds(*limits: float | None) -> float:
    """How long the warm-up recording is: 1 s, or less where the server's limit or the model's
    ``audio.max_seconds`` is shorter, so a server allowing 0.5 s still starts."""
    return min([WARM_UP_SECONDS, *(float(x) for x in limits if x)])


class BatchedService:
    """A predictor behind the server: ``decode`` runs request decoding off the event loop,
    ``infer`` queues one prepared item for the next model batch; every failure an ``ApiError``."""

    verb = "answer"  # what the model does, for the message when it fails ("the model failed to answer")

    def __init__(self, predictor: Any, batch: Callable[[list, int], list], limits: Any, metrics: Any = None):
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.model_id = predictor.model_id
        self.batcher = MicroBatcher(batch, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms,
                                    max_queue=limits.max_queue, on_batch=self._on_batch)
        self.decode_pool: ThreadPoolExecutor | None = None
        self.ready = False

    def _on_batch(self, size: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(size)
            self.metrics.inference.observe(seconds)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the decode pool and the model worker, then warm up: ready after that."""
        self.decode_pool = ThreadPoolExecutor(max_workers=self.limits.decode_threads,
                                              thread_name_prefix="omniformer-decode")
        await self.batcher.start()
        await self.warm_up()
        self.ready = True

    async def warm_up(self) -> None:
        """One request through the whole path (decode, features, model), so the first user does
        not pay for lazy initialisation; the task's own inputs."""

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool = None

    @property
    def running(self) -> bool:
        return self.batcher.running

    @property
    def queued(self) -> int:
        return self.batcher.queued

    # -- one request -----------------------------------------------------------------------------

    async def decode(self, prepare: Callable, *args: Any) -> Any:
        """``prepare(*args)`` in the decode pool, the batcher told that a request is on its way."""
        if self.decode_pool is None:
            raise ApiError(503, "not_ready", "the model is not ready (loading, warming up or stopped)")
        with self.batcher.reserve():
            return await asyncio.get_running_loop().run_in_executor(self.decode_pool, prepare, *args)

    async def infer(self, item: dict[str, Any], k: int = 1) -> Any:
        """The model's output for one prepared item, from the next micro-batch."""
        try:
            return await self.batcher.submit(item, k)
        except Overloaded as e:
            raise ApiError(503, "overloaded", str(e)) from None
        except BatcherStopped as e:
            raise ApiError(503, "not_ready", str(e)) from None
        except Exception as e:  # the model failed on this input: the worker survives, the client is told
            log.exception("the model failed to %s", self.verb)
            raise ApiError(500, "internal", f"the model failed to {self.verb}: {type(e).__name__}") from None
