"""The paired store's two buffers: the shuffle buffer whose contents and random state go into
checkpoints (so a resumed run sees exactly the batches the uninterrupted one would have seen),
and the background refill that runs the model's forwards ahead of the training step."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

PREFETCH_THREAD_NAME = "mxd-saelens-prefetch"


class ShuffleBuffer:
    """SAELens's mixing buffer (fill, shuffle, serve all but a kept fraction), with its state
    held in tensors so it can be saved and restored."""

    def __init__(
        self,
        refill: Callable[[], torch.Tensor],
        buffer_rows: int,
        batch_rows: int,
        mix_fraction: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        """With ``world_size`` > 1, every batch of ``batch_rows`` is cut in ``world_size``
        consecutive shares and share ``rank`` is served."""
        if not 0 <= mix_fraction <= 1:
            raise ValueError(f"activations_mixing_fraction must be in [0, 1], got {mix_fraction}.")
        self.refill = refill
        self.buffer_rows = max(buffer_rows, batch_rows)
        self.batch_rows = batch_rows
        self.share = slice(rank * batch_rows // world_size, (rank + 1) * batch_rows // world_size)
        self.mix_fraction = mix_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.storage: torch.Tensor | None = None
        self.serving: torch.Tensor | None = None

    def __iter__(self) -> ShuffleBuffer:
        return self

    @torch.no_grad()
    def __next__(self) -> torch.Tensor:
        if self.serving is None or self.serving.shape[0] < self.batch_rows:
            self._serve_more()
        assert self.serving is not None
        batch, self.serving = self.serving[: self.batch_rows], self.serving[self.batch_rows :]
        return batch[self.share]

    def _serve_more(self) -> None:
        storage = self.storage
        while storage is None or storage.shape[0] < self.buffer_rows:
            new = self.refill()
            storage = new if storage is None else torch.cat([storage, new])
        if self.mix_fraction > 0:
            order = torch.randperm(storage.shape[0], generator=self.generator)
            storage = storage[order.to(storage.device)]
        keep = int(self.buffer_rows * self.mix_fraction)
        n_serve = max(1, (storage.shape[0] - keep) // self.batch_rows) * self.batch_rows
        self.serving, self.storage = storage[:n_serve], storage[n_serve:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"generator": self.generator.get_state()}
        if self.storage is not None:
            state["storage"] = self.storage.contiguous()
        if self.serving is not None:
            state["serving"] = self.serving.contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.storage = state.get("storage")
        self.serving = state.get("serving")


# the stream position after a refill: (sequences served, dataset rows read)
Position = tuple[int, int]


_STOPPED = object()


class BackgroundRefill:
    """A refill (one model forward per call) run ahead in a background thread, up to ``depth``
    calls ahead: what overlaps the model's forward with the training step. torch's ops release
    the GIL, so on a CPU the forward and the step run at once on the intra-op threads each
    thread has (a new thread inherits ``torch.set_num_threads``).

    The results come out in the order ``source`` makes them; ``position`` is the stream
    position after the last result taken, read by ``read_position`` in the producing thread
    right after each forward. ``paused()`` keeps the model free for another use (an
    evaluation): the producer holds the same lock across each forward, since a
    TransformerLens forward with hooks is not safe to run in two threads at once.

    ``agree_to_stop(closed)`` (data-parallel runs) is called before every forward and says
    whether any rank's producer was closed: each forward all-gathers across ranks, so the
    producers must stop before the same one.
    """

    def __init__(
        self,
        source: Iterator[torch.Tensor],
        read_position: Callable[[], Position],
        depth: int,
        agree_to_stop: Callable[[bool], bool] | None = None,
    ):
        if depth < 1:
            raise ValueError(f"the prefetch depth must be at least 1, got {depth}.")
        self.source = source
        self.read_position = read_position
        self.position = read_position()
        self.depth = depth
        self.agree_to_stop = agree_to_stop
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self) -> torch.Tensor:
        if self._closed.is_set():
            raise RuntimeError("the background refill was closed.")
        if self._thread is None:  # started on first use, after any resumption has skipped
            self._thread = threading.Thread(
                target=self._produce, name=PREFETCH_THREAD_NAME, daemon=True
            )
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is _STOPPED:
            raise RuntimeError(
                "the background refill stopped: another process of the run closed its own."
            )
        rows, self.position = item
        return rows

    def _produce(self) -> None:
        try:
            while not self._should_stop():
                with self._lock:
                    item = (next(self.source), self.read_position())
                self._put(item)
            self._put(_STOPPED)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def _should_stop(self) -> bool:
        closed = self._closed.is_set()
        return self.agree_to_stop(closed) if self.agree_to_stop is not None else closed

    def _put(self, item: Any) -> None:
        """Queue ``item``, or drop it once closed (checked every 50 ms while the queue is full)."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                pass

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No forward runs in the background inside this block (waits for one in progress)."""
        with self._lock:
            yield

    def close(self) -> None:
        """Stop the producer and wait for it (at most one forward); queued results are dropped."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()


def prefetch_depth(prefetch: bool | int, refill_rows: int, rows_per_store_batch: int) -> int:
    """How many store batches a background refill computes ahead: ``True`` → as many as one
    refill of the buffer takes (the buffer refills in bursts, so a single batch ahead would
    overlap one forward of each burst), an int → that many."""
    if prefetch is True:
        return max(1, math.ceil(refill_rows / rows_per_store_batch))
    return int(prefetch)
