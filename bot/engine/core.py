"""The decode engine: one thread owns the model and decodes all running sequences together.

Requests from many chats arrive on a queue. Between decoding steps the engine admits new
requests (each prompt is prefilled alone, then its KV cache joins the running batch), drops
finished and cancelled sequences, and applies adapter swaps. A swap fills a pooled adapter no
running or queued sequence uses (:mod:`bot.engine.slots`), so no sequence ever sees two
adapters and no swap waits for the batch to drain. Every step feeds one token per sequence
through the model in a single forward pass (continuous batching); each row adds its own slot's
adapter.

The model should use :data:`bot.engine.attention.ROWWISE_ATTENTION`, so a sequence decodes
to exactly the same tokens whether it runs alone or in a batch.

A request is bound to its slot's adapter when it is submitted, and a swap changes what a slot
serves only once the weights are copied, under the same lock: a request submitted after the
swap took effect (:meth:`DecodeEngine.slot_source` names the new adapter) is served with it,
one submitted before with the old one, however long either waits in the queue.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot.engine.batch import Batch, Decode, EngineRequest, SequenceState
from bot.engine.lora import Weights
from bot.engine.prefill import Prefiller, PrefixStats
from bot.engine.slots import SlotTable
from bot.errors import GenerationError
from bot.generation.channel import as_generation_error, deliver, fail
from bot.generation.inbox import Inbox, Swap

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters for tests, benchmarks and status output (written by the engine thread only)."""

    steps: int = 0  # batched decoding steps
    tokens: int = 0  # tokens sampled, stop tokens included
    active: int = 0  # sequences in the running batch now
    max_batch: int = 0  # the largest batch so far
    waiting: int = 0  # requests received but not yet in the batch (a full batch, a swap ahead)


class DecodeEngine:
    """Runs ``model`` on a dedicated thread; see the module docstring for the schedule."""

    def __init__(
        self,
        model: Any,
        decode: Decode,
        *,
        slots: SlotTable,
        stop_ids: frozenset[int],
        context_window: int,
        max_batch_size: int,
        device: torch.device,
        min_rows: int = 1,
        prefix_cache_tokens: int = 0,
        prefill_threads: int | None = None,
    ) -> None:
        """``min_rows``: rows every decoding step computes, fillers included (see Batch);
        ``prefix_cache_tokens``: most prompt-prefix tokens whose KV cache is kept (0: none);
        ``prefill_threads``: torch threads while prefilling (None: as decoding)."""
        self._model = model
        self._decode = decode
        self._slots = slots
        self._stop_ids = stop_ids
        self._context_window = context_window
        self._max_batch = max_batch_size
        self._device = device
        # Adapters are the slot table's pooled names; a swap carries the weights to copy.
        self._inbox: Inbox[EngineRequest, str, Weights] = Inbox()
        self._batch = Batch(min_rows, slots.router)
        self._prefiller = Prefiller(model, device, prefix_cache_tokens, prefill_threads)
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="selftune-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: EngineRequest) -> None:
        """Queue a request, bound now to the adapter its slot serves (:meth:`slot_source`);
        its sink gets pieces, then None (or an exception)."""
        self._inbox.submit(request)

    def slot_source(self, slot: str) -> Path | None:
        """What ``slot`` serves: the next request submitted for it gets this adapter."""
        return self._inbox.source(slot)

    def swap(
        self, slot: str, weights: Weights | None, source: Path | None = None
    ) -> concurrent.futures.Future[None]:
        """Serve ``slot`` with ``weights`` (None: the zero adapter) once they are copied,
        between two steps (not behind queued requests: they keep the adapter they were bound
        to); ``source`` is what :meth:`slot_source` names then.

        The future fails (the slot unchanged) if the weights do not fit the model, or at once
        once the engine is stopping.
        """
        return self._inbox.swap(slot, weights, source)

    def stop(self, timeout: float | None = None) -> None:
        """Fail what is running or queued and end the thread (blocking up to ``timeout``)."""
        self._inbox.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def prefix_stats(self) -> PrefixStats:
        return self._prefiller.stats

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            # The swap is looked up when one arrives (tests hold it to pause a swap).
            while self._inbox.receive(
                lambda swap: self._run_swap(swap),
                block=not self._batch.rows and not self._inbox.pending,
            ):
                try:
                    self._admit()
                    if self._batch.rows:
                        self._step()
                except Exception as exc:  # the engine outlives any one failure
                    log.exception("decoding failed; failing %d sequences", len(self._batch.rows))
                    for seq in self._batch.rows:
                        deliver(seq.request, as_generation_error(exc))
                    self._batch.reset()
                    self._note_batch()
        finally:
            self._shutdown()

    def _admit(self) -> None:
        while self._inbox.pending:
            if len(self._batch.rows) >= self._max_batch:
                return
            head = self._inbox.take()
            if not head.request.cancelled.is_set():
                self._start(head.request, head.adapter)

    def _run_swap(self, swap: Swap[Weights]) -> None:
        # Queued requests' adapters keep their weights too.
        in_use = [*(seq.adapter for seq in self._batch.rows), *self._inbox.pinned()]
        try:
            self._slots.load(swap.slot, swap.payload, in_use)
        except BaseException as exc:  # handed to the caller, who decides what it means
            swap.future.set_exception(exc)
        else:
            # From here on, submitted requests are bound to the new adapter.
            self._inbox.serve(swap.slot, self._slots.resolve(swap.slot), swap.source)
            swap.future.set_result(None)

    def _start(self, request: EngineRequest, adapter: str | None) -> None:
        """Prefill one prompt alone, sample its first token, and join it to the batch."""
        try:
            prompt = request.tokens()
            seq = self._sequence(request, prompt.ids)
            seq.adapter = adapter
            self._slots.router.route_all(seq.adapter)
            with torch.inference_mode():
                logits, cache = self._prefiller.prefill(
                    prompt, self._slots.weights_key(seq.adapter)
                )
                done = seq.advance(_cpu_float(logits), self._stop_ids)
        except Exception as exc:
            fail(request, exc, "prefill failed")
            return
        self.stats.tokens += 1
        if done:
            seq.finish()
            return
        try:  # leaves the running batch as it was when it fails (e.g. out of memory)
            self._batch.join(seq, cache, len(prompt.ids))
        except Exception as exc:
            fail(request, exc, "joining the batch failed")
        self._note_batch()

    def _sequence(self, request: EngineRequest, prompt_ids: list[int]) -> SequenceState:
        limit = request.limit(len(prompt_ids), self._context_window)
        return SequenceState(request, prompt_ids, limit, self._decode)

    def _step(self) -> None:
        """One decoding step for every running sequence."""
        rows = self._batch.rows
        self._batch.keep([i for i, seq in enumerate(rows) if not seq.request.cancelled.is_set()])
        rows = self._batch.rows
        if not rows:
            self._note_batch()
            return
        with torch.inference_mode():
            logits = _cpu_float(self._batch.step(self._model))
            done = [seq.advance(logits[i : i + 1], self._stop_ids) for i, seq in enumerate(rows)]
        for seq, finished in zip(rows, done, strict=True):
            if finished:
                seq.finish()
        self._batch.keep([i for i, finished in enumerate(done) if not finished])
        self.stats.steps += 1
        self.stats.tokens += len(rows)
        self._note_batch()

    def _note_batch(self) -> None:
        self.stats.active = len(self._batch.rows)
        self.stats.max_batch = max(self.stats.max_batch, self.stats.active)
        self.stats.waiting = len(self._inbox.pending)

    def _shutdown(self) -> None:
        error = GenerationError("the model is shutting down")
        for request in self._inbox.close(error):  # also when the thread ends abnormally
            deliver(request, error)
        for seq in self._batch.rows:
            deliver(seq.request, error)
        self._batch.reset()
        self._note_batch()


def _cpu_float(logits: torch.Tensor) -> torch.Tensor:
    # Sampling is a few vector ops per row: on the CPU, in float32, it costs microseconds, and
    # seeded draws come out the same whatever device and precision run the model.
    return logits.float().cpu()
