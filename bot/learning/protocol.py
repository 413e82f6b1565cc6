"""The trainer protocol, shared by the parent (bot.learning) and the child (bot.trainer).

The parent writes a :class:`TrainingSpec` as SPEC.json and runs ``python -m bot.trainer
SPEC.json``; the child answers with one JSON event per line on stdout: :class:`Start`, then
:class:`Phase` and :class:`Step` events, then :class:`Done` or :class:`Error`. Every reader and
writer goes through these classes, so a change to the protocol is a change to one dataclass,
and mypy finds every place that reads it (the tests' fake trainer included).

No torch, no storage: the child process imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from bot.errors import TrainingError
from bot.learning.evaluation import Evaluation
from bot.settings import LoraSettings, TrainingSettings
from bot.types import GenerationParams

Method = Literal["sft", "kto"]  # "sft" (👍 only) or "kto" (👍 and 👎); resolved by the parent
PhaseName = Literal["baseline", "reference", "training", "evaluation", "samples"]
_PHASES = get_args(PhaseName)
_S = TypeVar("_S", bound=BaseModel)


# --- the spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSpec:
    """What the trainer samples for the gate's look at what a candidate writes
    (bot.trainer.visible): how many held-out prompts, replies to each, how they are drawn, and
    how well the reward model must rank the held-out ratings to be believed."""

    prompts: int = 16
    per_prompt: int = 3
    params: GenerationParams = field(default_factory=GenerationParams)  # as users are served
    min_auc: float = 0.7
    # chat messages (system, user) no taste is about: the base's greedy replies to them must
    # not become much less likely under the candidate (the gate's damage check)
    general: list[list[dict[str, str]]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleSpec:
        """Raises KeyError naming the missing entry as ``samples.<key>``."""
        try:
            return cls._read(data)
        except KeyError as exc:
            raise KeyError(f"samples.{exc.args[0]}") from None

    @classmethod
    def _read(cls, data: Mapping[str, Any]) -> SampleSpec:
        params = data["params"]
        return cls(
            prompts=int(data["prompts"]),
            per_prompt=int(data["per_prompt"]),
            params=GenerationParams(
                max_new_tokens=int(params["max_new_tokens"]),
                temperature=float(params["temperature"]),
                top_p=float(params["top_p"]),
                top_k=int(params["top_k"]),
                repetition_penalty=float(params["repetition_penalty"]),
            ),
            min_auc=float(data["min_auc"]),
            general=[_messages(m) for m in data.get("general", [])],
        )


def _messages(raw: Any) -> list[dict[str, str]]:
    """A prompt's chat messages as read from JSON: role and content strings."""
    if not isinstance(raw, list):
        raise ValueError(f"samples.general: a prompt must be a list of messages, not {raw!r}")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in raw]


@dataclass(frozen=True)
class TrainingSpec:
    """What the parent asks the trainer for (the SPEC.json file)."""

    model_dir: Path
    dataset: Path
    output_dir: Path
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    threads: int | None = None
    method: Method = "sft"
    serving_lora: Path | None = None  # the LoRA serving now, evaluated next to the new one
    serving_version: int | None = None  # its version number (for the record; None: the base)
    lm_dataset: Path | None = None  # unrated exchanges for the self-supervised term
    # preference pairs in TRL's format: {"prompt": [...], "chosen": [...], "rejected": [...]}
    pairs_dataset: Path | None = None
    samples: SampleSpec | None = None  # sample the candidate's replies for the gate (or not)

    def to_json(self) -> str:
        """The SPEC.json text."""
        data = {
            "model_dir": str(self.model_dir),
            "dataset": str(self.dataset),
            "output_dir": str(self.output_dir),
            "method": self.method,
            "serving_lora": _text(self.serving_lora),
            "serving_version": self.serving_version,
            "lm_dataset": _text(self.lm_dataset),
            "pairs_dataset": _text(self.pairs_dataset),
            "lora": self.lora.model_dump(),
            "training": self.training.model_dump(),
            "threads": self.threads,
            "samples": asdict(self.samples) if self.samples is not None else None,
        }
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSpec:
        """Build from parsed JSON; unknown keys are ignored, bad values raise TrainingError.

        Specs written before the rename name the serving LoRA ``current_adapter`` and its
        version ``current_version``: both are still read.
        """
        try:
            version = data.get("serving_version", data.get("current_version"))
            return cls(
                model_dir=Path(data["model_dir"]),
                dataset=Path(data["dataset"]),
                output_dir=Path(data["output_dir"]),
                lora=_section(LoraSettings, data.get("lora")),
                training=_section(TrainingSettings, data.get("training")),
                threads=int(data["threads"]) if data.get("threads") else None,
                method=_method(data.get("method", "sft")),
                serving_lora=_path(data.get("serving_lora", data.get("current_adapter"))),
                serving_version=int(version) if version is not None else None,
                lm_dataset=_path(data.get("lm_dataset")),
                pairs_dataset=_path(data.get("pairs_dataset")),
                samples=SampleSpec.from_dict(data["samples"]) if data.get("samples") else None,
            )
        except KeyError as exc:
            raise TrainingError(f"the training spec lacks {exc.args[0]!r}") from None
        except (ValidationError, TypeError, ValueError) as exc:
            raise TrainingError(f"invalid training spec: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> TrainingSpec:
        """Read SPEC.json; raises TrainingError with the reason when it cannot."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read the training spec {path}: {exc}") from None
        if not isinstance(data, dict):
            raise TrainingError(f"the training spec {path} is not a JSON object")
        return cls.from_dict(data)


def _method(value: Any) -> Method:
    if value == "sft" or value == "kto":
        return value  # type: ignore[no-any-return]
    raise ValueError(f"method must be 'sft' or 'kto', not {value!r}")


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def _text(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def _section(model: type[_S], data: Any) -> _S:
    known = {k: v for k, v in (data or {}).items() if k in model.model_fields}
    return model.model_validate(known)


# --- the events ----------------------------------------------------------------------------


class MalformedEvent(ValueError):
    """A line that claims to be a trainer event (a JSON object with ``"event"``) but is not a
    valid one: parent and child disagree about the protocol."""


@dataclass(frozen=True)
class Start:
    """Training begins: the method, the examples and what became of the rows."""

    method: Method
    examples: int
    total_steps: int
    dropped: int = 0
    liked: int = 0
    disliked: int = 0
    heldout_liked: int = 0
    heldout_disliked: int = 0
    lm_examples: int = 0

    def to_json(self) -> str:
        return _line("start", asdict(self))

    @classmethod
    def _from(cls, data: _Fields) -> Start:
        try:
            method = _method(data.text("method"))
        except ValueError:
            raise data.bad("method", data.text("method")) from None
        return cls(
            method,
            data.whole("examples"),
            data.whole("total_steps"),
            *(data.whole(name, 0) for name in _START_COUNTS),
        )


_START_COUNTS = (
    "dropped",
    "liked",
    "disliked",
    "heldout_liked",
    "heldout_disliked",
    "lm_examples",
)


@dataclass(frozen=True)
class Phase:
    """A stretch of work begins (scoring the reference, the baseline, training, evaluation)."""

    phase: PhaseName
    examples: int | None = None  # the examples scored (``reference``)
    heldout: int | None = None  # the held-out rows scored (``baseline``, ``evaluation``)

    def to_json(self) -> str:
        return _line("phase", asdict(self))

    @classmethod
    def _from(cls, data: _Fields) -> Phase:
        name = data.text("phase")
        if name not in _PHASES:
            raise data.bad("phase", name)
        phase: PhaseName = name  # type: ignore[assignment]  # checked just above
        return cls(phase, data.whole_or_none("examples"), data.whole_or_none("heldout"))


@dataclass(frozen=True)
class Step:
    """One optimizer step: its loss, and the KL estimate (KTO) and LM term (when on)."""

    step: int
    total_steps: int
    loss: float
    kl: float | None = None
    lm_loss: float | None = None

    def to_json(self) -> str:
        return _line("step", asdict(self))

    @classmethod
    def _from(cls, data: _Fields) -> Step:
        return cls(
            data.whole("step"),
            data.whole("total_steps"),
            data.number("loss"),
            data.number_or_none("kl"),
            data.number_or_none("lm_loss"),
        )


@dataclass(frozen=True)
class Done:
    """Training finished and the adapter is in place: training numbers, the held-out
    evaluation (None when nothing was held out), and what data the run used."""

    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        evaluation = self.evaluation.to_dict() if self.evaluation is not None else {}
        fields = {"metrics": self.metrics, "evaluation": evaluation, "data": self.data}
        return _line("done", fields)

    @classmethod
    def _from(cls, data: _Fields) -> Done:
        metrics = data.mapping("metrics")
        if not all(isinstance(v, int | float) for v in metrics.values()):
            raise data.bad("metrics", metrics)
        evaluation = data.mapping("evaluation")
        try:
            parsed = Evaluation.from_dict(evaluation) if evaluation else None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise data.bad("evaluation", evaluation) from None
        numbers = {str(k): float(v) for k, v in metrics.items()}
        return cls(numbers, parsed, data.mapping("data"))


@dataclass(frozen=True)
class Error:
    """The trainer cannot train; the message says why."""

    message: str

    def to_json(self) -> str:
        return _line("error", asdict(self))

    @classmethod
    def _from(cls, data: _Fields) -> Error:
        return cls(data.text("message"))


Event = Start | Phase | Step | Done | Error
_KINDS: dict[str, type[Start] | type[Phase] | type[Step] | type[Done] | type[Error]] = {
    "start": Start,
    "phase": Phase,
    "step": Step,
    "done": Done,
    "error": Error,
}


def parse(line: str) -> Event | None:
    """The event on ``line``; None for a line that is not one (a log line, a library's print).

    Raises MalformedEvent for a JSON object with an ``"event"`` key that is not a valid event.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "event" not in data:
        return None
    kind = _KINDS.get(data["event"]) if isinstance(data["event"], str) else None
    if kind is None:
        raise MalformedEvent(f"unknown trainer event {data['event']!r}")
    return kind._from(_Fields(str(data["event"]), data))


def _line(kind: str, fields: Mapping[str, Any]) -> str:
    """One event as one line of JSON; fields that are None are left out."""
    return json.dumps({"event": kind, **{k: v for k, v in fields.items() if v is not None}})


class _Fields:
    """Typed reads of one event's fields, each refusing a missing or mistyped value."""

    def __init__(self, kind: str, data: Mapping[str, Any]) -> None:
        self._kind = kind
        self._data = data

    def bad(self, name: str, value: object) -> MalformedEvent:
        return MalformedEvent(f"trainer event {self._kind!r}: bad {name!r}: {value!r}")

    def _get(self, name: str, kinds: tuple[type, ...], required: bool) -> Any:
        value = self._data.get(name)
        if value is None:
            if required:
                raise MalformedEvent(f"trainer event {self._kind!r} lacks {name!r}")
            return None
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise self.bad(name, value)
        return value

    def whole(self, name: str, default: int | None = None) -> int:
        """An integer field; required unless ``default`` is given."""
        value = self._get(name, (int,), default is None)
        return default if value is None and default is not None else int(value)

    def whole_or_none(self, name: str) -> int | None:
        value = self._get(name, (int,), False)
        return None if value is None else int(value)

    def number(self, name: str) -> float:
        return float(self._get(name, (int, float), True))

    def number_or_none(self, name: str) -> float | None:
        value = self._get(name, (int, float), False)
        return None if value is None else float(value)

    def text(self, name: str) -> str:
        return str(self._get(name, (str,), True))

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._get(name, (dict,), False)
        return dict(value) if value is not None else {}


@dataclass(frozen=True)
class TrainResult:
    """The parent's view of a finished run (the child's ``done`` event) and where the adapter
    is."""

    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    evaluation: Evaluation | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, output_dir: Path, done: Done) -> TrainResult:
        return cls(output_dir, done.metrics, done.evaluation, done.data)
