"""The llama.cpp decode engine: one thread owns the model, its contexts and every running row.

Requests from many chats arrive on a queue and are admitted in arrival order. A request is
bound to its slot's adapter when it is submitted (:meth:`LlamaEngine.submit`), and a swap
changes a slot only once its adapter and context are ready, under the same lock: what
:meth:`LlamaEngine.slot_source` names is what the next request gets, however long the queue.
Every step builds, per lane (a context with one adapter), one ``llama_batch`` holding the next
token of every running row plus chunks of prompts still being read (chunked prefill: at most
``batch_tokens`` tokens per call, so running replies never stall behind a long prompt), runs
one ``llama_decode`` and samples each row that reached the end of its tokens from its own
logits.

llama.cpp applies adapters per context, so each adapter in use has its own lane; a swap
points the slot at a new lane while rows already running (or queued) finish in theirs (never
two adapters in one sequence). Lanes and adapters nobody uses any more are freed; emptying a
slot other than the default frees its lane (an empty slot is the base model's).

KV cache: each context holds ``kv_tokens`` cells shared by its rows. A row reserves room for
its prompt plus its longest reply when it is admitted; a request that does not fit waits until
running rows finish, and one that could never fit fails with a GenerationError. So
``llama_decode`` never runs out of cells, and no request ever fails halfway.

Shared prefixes: once a row's prompt is computed, its system turn's cells are also kept under a
seq_id of their own (``llama_memory_seq_cp``: the unified cache tags the same cells, nothing is
copied); a later prompt with the same system turn starts from them and computes only the rest.
Kept prefixes give their cells back (oldest unused first) when rows need the room.

Batching changes rounding: llama.cpp computes a row's matmuls differently with the batch around
it, so a greedy reply may flip at a near-tie (measured on SmolLM2 bf16: 15 of 16 replies of 64
tokens identical alone and in a batch of 16; see tests/ggml/test_generator.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from bot.errors import GenerationError, LoraError, ModelLoadError
from bot.generation import DEFAULT_SLOT
from bot.generation.channel import as_generation_error, deliver, fail
from bot.generation.inbox import Inbox, Queued, Swap
from bot.ggml.llama import Adapter, Batch, Context, ContextShape, Model
from bot.ggml.rows import Lane, Request, Row
from bot.ggml.text import ChatText

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    """Counters for tests, benchmarks and status output (written by the engine thread only)."""

    steps: int = 0  # steps (one llama_decode per lane)
    tokens: int = 0  # tokens sampled, stop tokens included
    active: int = 0  # rows running now
    max_batch: int = 0  # the most rows running at once so far
    waiting: int = 0  # requests received but not running yet (no free row, no KV room)
    lanes: int = 0  # llama.cpp contexts alive
    prefix_hits: int = 0  # rows that started from a kept system turn's KV cells
    prefix_tokens: int = 0  # prompt tokens those rows did not compute
    step_seconds: float = 0.0  # time in steps (admitting, batching, decoding, sampling)
    decode_seconds: float = 0.0  # the part of it inside llama_decode (llama.cpp's kernels)
    thread_steps: dict[int, int] = field(default_factory=dict)  # steps run per thread count


class LlamaEngine:
    """Runs ``model`` on a dedicated thread; see the module docstring for the schedule.

    The engine owns ``model`` from :meth:`start` on and frees it when it stops.
    """

    def __init__(
        self, model: Model, text: ChatText, shape: ContextShape, *, context_window: int
    ) -> None:
        self._model = model
        self._text = text
        self._shape = shape
        self._context_window = context_window
        self._inbox: Inbox[Request, Adapter, Path] = Inbox()  # a swap carries a GGUF file
        self._adapters: dict[tuple[Path, int], Adapter] = {}  # loaded, by file and mtime
        self._lanes: dict[Adapter | None, Lane] = {}
        self._batch: Batch | None = None
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="selftune-llama", daemon=True)

    def start(self) -> None:
        """Create the base model's context and start the thread; ModelLoadError (the model
        freed) if llama.cpp cannot create a context of this shape."""
        try:
            self._check_shape()
            self._batch = Batch(self._shape.batch_tokens)
            capacity = self._lane(None).context.capacity
        except (GenerationError, LoraError) as exc:
            self._shutdown()
            raise ModelLoadError(f"cannot create a llama.cpp context: {exc}") from exc
        # No row may outgrow one context: longer conversations are trimmed (fit_prompt).
        self._context_window = min(self._context_window, capacity)
        self._note()
        self._thread.start()

    def _check_shape(self) -> None:
        rows, most = self._shape.max_rows + self._shape.prefixes, max_sequences()
        if rows > most:
            raise GenerationError(
                f"{self._shape.max_rows} rows (model.max_batch_size) and "
                f"{self._shape.prefixes} kept prompt prefixes need {rows} sequences, and "
                f"llama.cpp allows {most}: lower model.max_batch_size"
            )

    @property
    def context_window(self) -> int:
        """The most tokens one row (prompt and reply) may reach: the model's window, capped
        at what one context holds."""
        return self._context_window

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def slot_source(self, slot: str) -> Path | None:
        """What ``slot`` serves: the next request submitted for it gets this adapter."""
        return self._inbox.source(slot)

    def submit(self, request: Request) -> None:
        """Queue a request, bound to its slot's adapter now; its sink gets pieces, then None
        (or an exception)."""
        self._inbox.submit(request)

    def swap(
        self, slot: str, path: Path | None, source: Path | None = None
    ) -> concurrent.futures.Future[None]:
        """Serve ``slot`` with the GGUF adapter at ``path`` (None: the base model; a slot other
        than the default is emptied) once it and its context are ready, between two steps;
        ``source`` is what :meth:`slot_source` names then. The future fails with LoraError (the
        slot unchanged) if llama.cpp cannot load or apply it."""
        return self._inbox.swap(slot, path, source)

    def stop(self, timeout: float | None = None) -> None:
        """Fail what is running or queued, free every llama.cpp object and end the thread."""
        self._inbox.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                try:
                    idle = not self._running() and not self._inbox.pending
                    # The swap is looked up when one arrives (tests hold it to pause a swap).
                    if not self._inbox.receive(lambda swap: self._run_swap(swap), block=idle):
                        return
                    self._iterate()
                except Exception as exc:  # a bug: fail what is running, keep serving
                    log.exception("a step of the llama.cpp engine failed")
                    for lane in list(self._lanes.values()):
                        self._fail_lane(lane, exc)
        finally:
            self._shutdown()

    def _iterate(self) -> None:
        """Admit what fits, then one step per lane; a lane that fails fails only its rows."""
        started = time.perf_counter()
        self._admit()
        for lane in list(self._lanes.values()):
            if lane.rows:
                self._step(lane)
        self._note()
        self.stats.step_seconds += time.perf_counter() - started

    def _running(self) -> int:
        return sum(len(lane.rows) for lane in self._lanes.values())

    def _admit(self) -> None:
        """Start pending requests in order while there are free rows and KV room."""
        while self._inbox.pending:
            head = self._inbox.pending[0]
            if head.request.cancelled.is_set():
                self._inbox.take()
                continue
            if self._running() >= self._shape.max_rows:
                return
            try:
                if not self._start(head):
                    return  # waits for KV room: later requests keep their turn behind it
            except Exception as exc:
                fail(head.request, exc, "starting a request failed")
            self._inbox.take()

    def _start(self, queued: Queued[Request, Adapter]) -> bool:
        """Open a row for the request in its adapter's lane; False when its KV room is not free
        yet."""
        request = queued.request
        prompt = request.tokens()
        limit = request.limit(len(prompt.ids), self._context_window)
        lane = self._lane(queued.adapter)
        if limit > lane.context.capacity:
            raise GenerationError(
                f"the prompt and reply need {limit} tokens of KV cache, and it holds "
                f"{lane.context.capacity} (model.kv_cache_tokens)"
            )
        if not lane.fits(prompt, limit):
            return False
        row = lane.open(request, prompt, limit, self._text.decoder())
        if row.fed:
            self.stats.prefix_hits += 1
            self.stats.prefix_tokens += row.fed
        return True

    def _lane(self, adapter: Adapter | None) -> Lane:
        lane = self._lanes.get(adapter)
        if lane is None:
            context = Context(self._model, self._shape, adapter)
            lane = self._lanes[adapter] = Lane(context, adapter, self._shape)
        return lane

    def _run_swap(self, swap: Swap[Path]) -> None:
        try:
            adapter = None if swap.payload is None else self._adapter(swap.payload)
            if swap.payload is not None or swap.slot == DEFAULT_SLOT:
                self._lane(adapter)  # fails here, before the slot changes, if it cannot apply
        except BaseException as exc:  # handed to the caller, who decides what it means
            swap.future.set_exception(exc)
            self._collect()  # an adapter loaded for a context that could not be made
            return
        # From here on, submitted requests get the new adapter.
        if swap.payload is None and swap.slot != DEFAULT_SLOT:
            self._inbox.empty(swap.slot)  # no context of its own
        else:
            self._inbox.serve(swap.slot, adapter, swap.source)
        self._collect()
        self._note()  # the caller sees the lanes as they are now
        swap.future.set_result(None)

    def _adapter(self, path: Path) -> Adapter:
        key = (path, path.stat().st_mtime_ns)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._adapters[key] = Adapter(self._model, path)
        return adapter

    def _collect(self) -> None:
        """Free lanes with no rows whose adapter neither a slot nor a queued request holds,
        then unused adapters."""
        pinned = self._inbox.pinned()
        for adapter, lane in list(self._lanes.items()):
            if not lane.rows and adapter not in pinned:
                lane.context.free()
                del self._lanes[adapter]
        for key, adapter in list(self._adapters.items()):
            if adapter not in pinned and adapter not in self._lanes:
                adapter.free()
                del self._adapters[key]

    def _step(self, lane: Lane) -> None:
        """One llama_decode for the lane's rows; a failure ends only this lane's rows."""
        for row in [r for r in lane.rows if r.request.cancelled.is_set()]:
            lane.close(row)
        batch = self._batch
        assert batch is not None
        try:
            outputs = self._fill(lane, batch)
            if batch.size:
                self._decode(lane, batch)
        except Exception as exc:
            log.exception("decoding failed")
            self._fail_lane(lane, exc)
        else:
            self._sample(lane, outputs)
        if not lane.rows:
            self._collect()

    def _decode(self, lane: Lane, batch: Batch) -> None:
        """One llama_decode, on the thread count the lane's tuner picks for its size."""
        threads = lane.tuner.pick(batch.size)
        lane.context.use_threads(threads)
        started = time.perf_counter()
        lane.context.decode(batch)
        seconds = time.perf_counter() - started
        lane.tuner.record(batch.size, threads, seconds)
        self.stats.decode_seconds += seconds
        self.stats.steps += 1
        counts = self.stats.thread_steps  # a new dict: copies of the stats keep their own
        self.stats.thread_steps = counts | {threads: counts.get(threads, 0) + 1}

    def _fail_lane(self, lane: Lane, exc: Exception) -> None:
        if lane.rows:
            log.error("failing %d rows: %s", len(lane.rows), exc)
        for row in list(lane.rows):
            deliver(row.request, as_generation_error(exc))
            lane.close(row)

    @staticmethod
    def _fill(lane: Lane, batch: Batch) -> list[tuple[Row, int]]:
        """Put every decoding row's token, then prompt chunks, into the batch; returns the rows
        that get logits this step with their batch index. Marks the tokens as fed."""
        batch.clear()
        outputs: list[tuple[Row, int]] = []
        # Running replies first (one token each), then prompts in arrival order.
        for row in sorted(lane.rows, key=lambda r: r.waiting > 1):
            count = min(row.waiting, batch.capacity - batch.size)
            for pos in range(row.fed, row.fed + count):
                last = pos == len(row.tokens) - 1
                index = batch.add(row.tokens[pos], pos, row.seq_id, output=last)
                if last:
                    outputs.append((row, index))
            row.fed += count
        return outputs

    def _sample(self, lane: Lane, outputs: list[tuple[Row, int]]) -> None:
        """Each row's next token from its logits; a row that fails here ends alone."""
        for row, index in outputs:
            if row.request.cancelled.is_set():
                lane.close(row)
                continue
            try:
                done = self._next(lane, row, index)
            except Exception as exc:
                fail(row.request, exc, "sampling a reply failed")
                done = True
            if done:
                lane.close(row)

    def _next(self, lane: Lane, row: Row, index: int) -> bool:
        """Sample and hand on one token of ``row``; whether its reply is complete (and told)."""
        token = row.sampler.sample(lane.context.logits(index), row.tokens)
        self.stats.tokens += 1
        if row.publish:  # its prompt is in the cache now, system turn included
            lane.publish(row)
        if row.advance(token, self._text.stop_ids):
            row.finish()
            return True
        return False

    def _note(self) -> None:
        self.stats.active = self._running()
        self.stats.max_batch = max(self.stats.max_batch, self.stats.active)
        self.stats.waiting = len(self._inbox.pending)
        self.stats.lanes = len(self._lanes)

    def _shutdown(self) -> None:
        error = GenerationError("the model is shutting down")
        for request in self._inbox.close(error):  # also when the thread ends abnormally
            deliver(request, error)
        for lane in self._lanes.values():
            for row in lane.rows:
                deliver(row.request, error)
            lane.rows.clear()
        for lane in self._lanes.values():
            lane.context.free()
        for adapter in self._adapters.values():
            adapter.free()
        self._lanes.clear()
        self._adapters.clear()
        if self._batch is not None:
            self._batch.free()
        self._model.free()
        self._note()


def max_sequences() -> int:
    """The most sequences (rows and kept prefixes) one llama.cpp context may have."""
    return int(llama_cpp.llama_max_parallel_sequences())
