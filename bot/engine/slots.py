"""Adapter slots: several LoRA adapters served in the same batch, each row with its own.

The serving model keeps peft's LoRA layers switched off (they pass the base output through) and
adds each row's adapter itself, in a forward hook on every LoRA layer (:class:`LoraRouter`).
Before a forward pass the engine says which adapter each batch row uses; rows with the zero
adapter (an empty slot, or the base model) cost nothing. Why not peft's own ``adapter_names``
mixed batches: peft registers and removes a pre-hook on every LoRA layer per forward pass, and
it rounds an adapter's output differently in a mixed batch than in a uniform one, so a sequence
would decode differently depending on its neighbours. Here one formula serves both cases.

Adapters live in peft adapters of the one model (same :func:`lora_config`), pooled by
:class:`SlotTable`: a swap copies the new weights into an adapter no slot and no running
sequence uses, then points the slot at it. Running sequences keep the adapter they started
with, and a swap never waits for the batch to drain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear

from bot.engine.lora import ADAPTER_NAME, Weights, load_weights, lora_config
from bot.settings import LoraSettings

LORA_MIN_ROWS = 4
"""Rows every adapter matmul computes (a group with fewer is padded with copies of its first
row): MKL's float32 kernels compute a row differently for 1, 2-3 and 4+ rows (measured),
oneDNN's bfloat16 ones the same for any count; an adapter's matmuls are tiny, padding is free."""


@dataclass(frozen=True)
class _Group:
    adapter: str
    rows: torch.Tensor | None  # row indices (padded to LORA_MIN_ROWS); None: every row
    count: int  # real rows at the front of ``rows``


class LoraRouter:
    """Adds each batch row's LoRA adapter to the output of every LoRA layer of ``model``.

    Set the routing with :meth:`route` before each forward pass (engine thread only).
    """

    def __init__(self, model: Any) -> None:
        self._groups: list[_Group] = []
        self._device = next(model.parameters()).device
        self._layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
        others = [
            type(m).__name__
            for m in model.modules()
            if hasattr(m, "lora_A") and not isinstance(m, LoraLinear)
        ]
        if others:
            raise ValueError(f"adapter slots serve LoRA on linear layers only, not {others[0]}")
        for layer in self._layers:
            layer.register_forward_hook(self._hook)

    def route(self, adapters: Sequence[str | None], rows: int) -> None:
        """Row ``i`` < len(adapters) uses ``adapters[i]`` (None: none); later rows (fillers)
        use none. ``rows`` counts every row of the coming forward pass (dimension 0)."""
        groups: list[_Group] = []
        for name in dict.fromkeys(a for a in adapters if a is not None):
            index = [i for i, a in enumerate(adapters) if a == name]
            if len(index) == rows and rows >= LORA_MIN_ROWS:
                groups.append(_Group(name, None, rows))
                continue
            padded = index + [index[0]] * max(0, LORA_MIN_ROWS - len(index))
            groups.append(_Group(name, torch.tensor(padded, device=self._device), len(index)))
        self._groups = groups

    def route_all(self, adapter: str | None) -> None:
        """Every row uses ``adapter``: a prompt being prefilled, one row of many tokens. It
        always runs alone, so it needs no padding to compute the same in any company."""
        self._groups = [] if adapter is None else [_Group(adapter, None, 1)]

    def _hook(self, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not self._groups:
            return output
        x = args[0]
        dtype = output.dtype
        for group in self._groups:
            lora_a = module.lora_A[group.adapter].weight
            lora_b = module.lora_B[group.adapter].weight
            scaling = module.scaling[group.adapter]
            if group.rows is None:
                # peft's own formula (dropout is off when serving): the same rounding as training.
                delta = _delta(x, lora_a, lora_b, scaling)
                output = (output + delta).to(dtype)
                continue
            delta = _delta(x.index_select(0, group.rows), lora_a, lora_b, scaling)
            real = group.rows[: group.count]
            output[real] = (output[real] + delta[: group.count]).to(dtype)
        return output


def _delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    linear = torch.nn.functional.linear
    return linear(linear(x.to(a.dtype), a), b) * scaling


class SlotTable:
    """Which pooled peft adapter each slot serves, and the router adding them; engine thread
    only (build it before the engine starts).

    A slot that was never filled, or was emptied, serves the zero adapter (no LoRA at all).
    """

    def __init__(self, model: Any, lora: LoraSettings) -> None:
        self._model = model
        self._lora = lora
        self.router = LoraRouter(model)  # raises ValueError for LoRA on non-linear layers
        model.base_model.disable_adapter_layers()  # the router adds adapters, not peft
        self._pool = [ADAPTER_NAME]  # peft adapters holding weights (the first exists already)
        self._slots: dict[str, str | None] = {}
        self._loads: dict[str, int] = {}  # times weights were copied into each pooled adapter

    def resolve(self, slot: str) -> str | None:
        """The peft adapter ``slot`` serves now (None: the zero adapter)."""
        return self._slots.get(slot)

    def weights_key(self, adapter: str | None) -> tuple[str, int] | None:
        """Names the weights a pooled adapter holds now (they change when it is reused)."""
        return None if adapter is None else (adapter, self._loads.get(adapter, 0))

    def load(self, slot: str, weights: Weights | None, in_use: Iterable[str | None]) -> None:
        """Serve ``slot`` with ``weights`` (None: empty it) from now on.

        ``in_use``: adapters of running sequences; their weights are never overwritten. On a
        failed copy the slot keeps what it served.
        """
        if weights is None:
            self._slots[slot] = None
            return
        target = self._spare({*self._slots.values(), *in_use})
        self._loads[target] = self._loads.get(target, 0) + 1  # before: even a failed copy
        load_weights(self._model, weights, adapter_name=target)
        self._slots[slot] = target

    @property
    def pool_size(self) -> int:
        """peft adapters allocated so far (slots plus those still finishing sequences)."""
        return len(self._pool)

    def _spare(self, held: set[str | None]) -> str:
        for name in self._pool:
            if name not in held:
                return name
        name = f"pool{len(self._pool)}"
        self._model.add_adapter(name, lora_config(self._lora))
        self._model.base_model.disable_adapter_layers()  # the router adds adapters, not peft
        self._pool.append(name)
        return name
