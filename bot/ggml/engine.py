"""The llama.cpp decode engine: one thread owns the model, its contexts and every running row.

Requests from many chats arrive on a queue and are handled in arrival order, adapter swaps
included: a request submitted after a swap gets the new adapter. Every step builds, per lane
(a context with one adapter), one ``llama_batch`` holding the next token of every running row
plus chunks of prompts still being read (chunked prefill: at most ``batch_tokens`` tokens per
call, so running replies never stall behind a long prompt), runs one ``llama_decode`` and
samples each row that reached the end of its tokens from its own logits.

llama.cpp applies adapters per context, so each adapter in use has its own lane; a swap
points the slot at a new lane while rows already running finish in theirs (never two adapters
in one sequence). Lanes and adapters nobody uses any more are freed.

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

import collections
import concurrent.futures
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from bot.errors import GenerationError
from bot.generation import DEFAULT_SLOT
from bot.ggml.llama import Adapter, Batch, Context, ContextShape, Model
from bot.ggml.rows import Lane, Request, Row, deliver
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


@dataclass
class _Swap:
    slot: str
    path: Path | None  # a GGUF LoRA; None: empty the slot (the base model)
    future: concurrent.futures.Future[None]


_STOP = object()
_Command = Request | _Swap | object


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
        self._inbox: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._pending: collections.deque[Request | _Swap] = collections.deque()
        self._slots: dict[str, Adapter | None] = {DEFAULT_SLOT: None}
        self._adapters: dict[tuple[Path, int], Adapter] = {}  # loaded, by file and mtime
        self._lanes: dict[Adapter | None, Lane] = {}
        self._batch: Batch | None = None
        self.stats = EngineStats()
        self._thread = threading.Thread(target=self._run, name="selftune-llama", daemon=True)
        self._lock = threading.Lock()  # orders submit/swap against stop
        self._stopped = False

    def start(self) -> None:
        self._batch = Batch(self._shape.batch_tokens)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: Request) -> None:
        """Queue a request; its sink gets pieces, then None (or an exception)."""
        with self._lock:
            if self._stopped:
                deliver(request, GenerationError("the model is shutting down"))
                return
            self._inbox.put(request)

    def swap(self, slot: str, path: Path | None) -> concurrent.futures.Future[None]:
        """Serve ``slot`` with the GGUF adapter at ``path`` (None: the base model) from the next
        request on. The future fails with LoraError (the slot unchanged) if llama.cpp cannot
        load or apply it."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._stopped:
                future.set_exception(GenerationError("the model is shutting down"))
            else:
                self._inbox.put(_Swap(slot, path, future))
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Fail what is running or queued, free every llama.cpp object and end the thread."""
        with self._lock:
            self._stopped = True
            self._inbox.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while self._receive(block=not self._running() and not self._pending):
                self._admit()
                for lane in list(self._lanes.values()):
                    if lane.rows:
                        self._step(lane)
                self._note()
        except Exception:  # a bug in the schedule itself: fail everything, never hang
            log.exception("the llama.cpp engine failed")
        finally:
            self._shutdown()

    def _running(self) -> int:
        return sum(len(lane.rows) for lane in self._lanes.values())

    def _receive(self, *, block: bool) -> bool:
        """Move commands from the inbox to the pending queue; False once stop was requested."""
        try:
            command = self._inbox.get(block=block)
            while True:
                if command is _STOP:
                    return False
                assert isinstance(command, Request | _Swap)
                self._pending.append(command)
                command = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _admit(self) -> None:
        """Start pending requests in order while there are free rows and KV room."""
        while self._pending:
            head = self._pending[0]
            if isinstance(head, _Swap):
                self._pending.popleft()
                self._run_swap(head)
                continue
            if head.cancelled.is_set():
                self._pending.popleft()
                continue
            if self._running() >= self._shape.max_rows:
                return
            try:
                if not self._start(head):
                    return  # waits for KV room: later requests keep their turn behind it
            except Exception as exc:
                _fail(head, exc, "starting a request failed")
            self._pending.popleft()

    def _start(self, request: Request) -> bool:
        """Open a row for ``request`` in its slot's lane; False when its KV room is not free yet."""
        if request.tokens is None:
            request.tokens = request.prompt()
        prompt = request.tokens
        limit = self._limit(request, prompt.ids)
        lane = self._lane(self._slots.get(request.slot))
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

    def _limit(self, request: Request, ids: list[int]) -> int:
        if request.params.max_new_tokens < 1:
            raise GenerationError("max_new_tokens must be at least 1")
        room = self._context_window - len(ids)
        if room <= 0 or not ids:
            raise GenerationError(
                f"the conversation is too long for the model: {len(ids)} tokens, "
                f"and the context window holds {self._context_window}"
            )
        return len(ids) + min(request.params.max_new_tokens, room)

    def _lane(self, adapter: Adapter | None) -> Lane:
        lane = self._lanes.get(adapter)
        if lane is None:
            context = Context(self._model, self._shape, adapter)
            lane = self._lanes[adapter] = Lane(context, adapter, self._shape)
        return lane

    def _run_swap(self, swap: _Swap) -> None:
        try:
            adapter = None if swap.path is None else self._adapter(swap.path)
            self._lane(adapter)  # fails here, not for the next request, if it cannot apply
        except BaseException as exc:  # handed to the caller, who decides what it means
            swap.future.set_exception(exc)
        else:
            self._slots[swap.slot] = adapter
            swap.future.set_result(None)
        self._collect()

    def _adapter(self, path: Path) -> Adapter:
        key = (path, path.stat().st_mtime_ns)
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._adapters[key] = Adapter(self._model, path)
        return adapter

    def _collect(self) -> None:
        """Free lanes with no rows whose adapter no slot serves, then unused adapters."""
        served = set(self._slots.values())
        for adapter, lane in list(self._lanes.items()):
            if not lane.rows and adapter not in served:
                lane.context.free()
                del self._lanes[adapter]
        for key, adapter in list(self._adapters.items()):
            if adapter not in served and adapter not in self._lanes:
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
                lane.context.decode(batch)
                self._sample(lane, outputs)
                self.stats.steps += 1
        except Exception as exc:
            log.exception("decoding failed; failing %d rows", len(lane.rows))
            for row in list(lane.rows):
                deliver(row.request, _as_generation_error(exc))
                lane.close(row)
        if not lane.rows:
            self._collect()

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
        stop_ids = self._text.stop_ids
        for row, index in outputs:
            if row.request.cancelled.is_set():
                lane.close(row)
                continue
            token = row.sampler.sample(lane.context.logits(index), row.tokens)
            self.stats.tokens += 1
            if row.publish:  # its prompt is in the cache now, system turn included
                lane.publish(row)
            if row.advance(token, stop_ids):
                deliver(row.request, None)
                lane.close(row)

    def _note(self) -> None:
        self.stats.active = self._running()
        self.stats.max_batch = max(self.stats.max_batch, self.stats.active)
        self.stats.waiting = sum(isinstance(item, Request) for item in self._pending)
        self.stats.lanes = len(self._lanes)

    def _shutdown(self) -> None:
        with self._lock:  # also when the thread ends abnormally: nothing more is queued
            self._stopped = True
        error = GenerationError("the model is shutting down")
        for lane in self._lanes.values():
            for row in lane.rows:
                deliver(row.request, error)
            lane.rows.clear()
        self._slots.clear()
        self._collect()  # with no slots and no rows: every context and adapter
        self._fail_pending(error)
        if self._batch is not None:
            self._batch.free()
        self._model.free()
        self._note()

    def _fail_pending(self, error: GenerationError) -> None:
        while True:  # what was queued before the stop flag was set
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, Request | _Swap):
                self._pending.append(command)
        for pending in self._pending:
            if isinstance(pending, _Swap):
                pending.future.set_exception(error)
            else:
                deliver(pending, error)
        self._pending.clear()


def _fail(request: Request, exc: Exception, what: str) -> None:
    """This request ends with an error; the others go on."""
    if not isinstance(exc, GenerationError):
        log.exception(what)
    deliver(request, _as_generation_error(exc))


def _as_generation_error(exc: Exception) -> GenerationError:
    if isinstance(exc, GenerationError):
        return exc
    return GenerationError(f"the model failed to generate ({type(exc).__name__}: {exc})")
