"""In-process micro-batching: concurrent requests wait up to `max_wait_ms` for company, up to
`max_batch` of them go through one forward pass on one model thread. A full queue refuses at
once (Overloaded -> 503); a caller that gives up (504) leaves its slot to be skipped."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np


class Overloaded(Exception):
    """The queue is full: come back later."""


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list[np.ndarray]], np.ndarray], max_batch: int, max_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int, float], None] | None = None):
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queue: asyncio.Queue | None = None
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.model_thread.shutdown(wait=True, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, inputs: Sequence[np.ndarray], timing: dict | None = None) -> np.ndarray:
        """C x h x w probabilities for one image's inputs (one 3xHxW array per input key); `timing`, when
        given, receives the perf_counter times its batch's forward pass started and ended."""
        if self.queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.queue.qsize()} requests already waiting (limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((list(inputs), fut, timing))
        return await fut

    async def _gather(self) -> list:
        first = await self.queue.get()
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.queue.get_nowait() if remaining <= 0 else
                             await asyncio.wait_for(self.queue.get(), remaining))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return [item for item in batch if not item[1].done()]  # callers that gave up are skipped

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            stacked = [np.stack([inputs[k] for inputs, _, _ in batch]) for k in range(len(batch[0][0]))]
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.model_thread, self.run_batch, stacked)
            except Exception as exc:  # the model failed: every caller of this batch hears it
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            t1 = time.perf_counter()
            if self.on_batch:
                self.on_batch(len(batch), t1 - t0)
            for i, (_, fut, timing) in enumerate(batch):
                if timing is not None:
                    timing.update(infer_start=t0, infer_end=t1)
                if not fut.done():
                    fut.set_result(probs[i])
