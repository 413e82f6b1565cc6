"""How adapter versions are shown: one line each (``/adapters``, ``selftune adapters``) and in
full (``/adapters N``). Shared by the chat commands and the CLI."""

from __future__ import annotations

from bot.learning.evaluation import GATE_METRICS, gate_metric
from bot.types import AdapterVersion

_TRAINER_TIME = "duration_s"  # the trainer's own time, shown with the run's (``_took``)
_NAMES = {  # other numbers than the gate's, as shown; rest as recorded
    "train_loss": "train loss",
    "liked_share": "predicted 👍 share of its replies",
    "general_nll": "NLL of the base's replies to general prompts",
    "sample_nll": "NLL of the serving adapter's replies",  # versions trained before 2026-12-07
    "reward_auc": "reward model AUC",
}
_GATE_METRICS = tuple(m.name for m in GATE_METRICS)  # the default first
_PREFIXES = ("serving.", "base.")
_FIRST_IDS = 10  # exchange ids the detail view lists
SERVING_MARK = "▶"  # the active version, in the chat's /adapters and in `selftune adapters`
CANDIDATE_MARK = "◐"  # the A/B test's candidate
_GATE_SETTINGS = ("margin", "min_heldout", "when_undecided", "heldout_fraction", "heldout_max")


def mark(serving: bool, candidate: bool = False) -> str:
    """The column in front of a version in a list: serving, A/B candidate, or blank."""
    return f"{SERVING_MARK} " if serving else f"{CANDIDATE_MARK} " if candidate else "  "


def _name(metric: str) -> str:
    known = gate_metric(metric)
    return known.short if known is not None else _NAMES.get(metric, metric)


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _gate(v: AdapterVersion) -> dict[str, object]:
    gate = v.hyperparams.get("gate")
    return {str(k): val for k, val in gate.items()} if isinstance(gate, dict) else {}


def deciding_metric(v: AdapterVersion) -> str:
    """The metric the gate decided on (recorded with its decision), else the first of the
    gate's metrics that the version has numbers for (the default, reward margin, first)."""
    recorded = _gate(v).get("metric")
    if isinstance(recorded, str):
        return recorded
    return next((m for m in _GATE_METRICS if m in v.metrics), _GATE_METRICS[0])


def format_version(v: AdapterVersion) -> str:
    """One line per version: status, lineage, data, the deciding metric next to the serving
    adapter's value when it was trained, the train loss, the gate's verdict."""
    metric = deciding_metric(v)
    shown = []
    if metric in v.metrics:
        serving = v.metrics.get(f"serving.{metric}")
        vs = f" (serving {serving:.3g})" if serving is not None else ""
        shown.append(f"{_name(metric)} {v.metrics[metric]:.3g}{vs}")
    if "train_loss" in v.metrics:
        shown.append(f"train loss {v.metrics['train_loss']:.3g}")
    verdict = _gate(v).get("verdict")
    method = v.hyperparams.get("method")
    took = f", {v.duration_s:.0f} s" if v.duration_s is not None else ""
    flags = " ⚠ trained on forgotten data" if v.tainted else ""
    return (
        f"v{v.version} [{v.status}] {v.created_at:%Y-%m-%d %H:%M} UTC, parent "
        f"{'v' + str(v.parent) if v.parent else 'base'}, "
        + (f"{str(method).upper()} " if method else "")
        + f"on {len(v.exchange_ids)} exchanges{took}"
        + (f"; {', '.join(shown)}" if shown else "")
        + (f", gate: {verdict}" if verdict else "")
        + flags
    )


def _took(v: AdapterVersion) -> str:
    """The run's wall time and, apart, the trainer's own (``duration_s``): they differ by
    the trainer's start-up and the release, and must not read as two answers to one question."""
    if v.duration_s is None:
        return ""
    trainer = v.metrics.get(_TRAINER_TIME)
    inside = f", {trainer:.0f} s of it in the trainer" if trainer is not None else ""
    return f"; the run took {v.duration_s:.0f} s{inside}"


def _settings_line(title: str, values: object) -> str | None:
    if not isinstance(values, dict) or not values:
        return None
    parts = [
        f"{k} {'/'.join(map(str, val)) if isinstance(val, list) else _number(val)}"
        for k, val in values.items()
        if val is not None
    ]
    return f"{title}: {', '.join(parts)}"


def version_details(v: AdapterVersion, serving: int | None, candidate: int | None) -> str:
    """Everything recorded about one version (``/adapters N``)."""
    role = (
        f" {SERVING_MARK} serving"
        if v.version == serving
        else f" {CANDIDATE_MARK} the A/B test's candidate"
        if v.version == candidate
        else ""
    )
    lines = [
        f"Adapter v{v.version} [{v.status}]{role}",
        f"Parent: {'v' + str(v.parent) if v.parent else 'base model'}",
        f"Created: {v.created_at:%Y-%m-%d %H:%M} UTC{_took(v)}",
        "Tainted: yes, trained on data a user later asked to /forget"
        if v.tainted
        else "Tainted: no",
    ]
    method = v.hyperparams.get("method")
    if method:
        lines.append(f"Method: {str(method).upper()}")
    titles = {"lora": "LoRA", "training": "Training"}
    for key, values in v.hyperparams.items():
        if key not in ("method", "gate"):
            line = _settings_line(titles.get(key, key), values)
            lines.append(line if line is not None else f"{key}: {_number(values)}")
    lines.extend(_gate_lines(v))
    ids = sorted(v.exchange_ids)
    listed = ", ".join(map(str, ids[:_FIRST_IDS])) + (", …" if len(ids) > _FIRST_IDS else "")
    lines.append(f"Exchanges: {len(ids)}" + (f" (ids {listed})" if ids else ""))
    return "\n".join(lines)


def _gate_lines(v: AdapterVersion) -> list[str]:
    gate = _gate(v)
    lines = []
    if gate.get("verdict"):
        lines.append(f"Gate: {gate['verdict']} — {gate.get('reason', '')}")
        settings = {k: gate[k] for k in _GATE_SETTINGS if k in gate}
        line = _settings_line("Gate settings", settings)
        if line:
            lines.append(line)
    decides = deciding_metric(v)
    compared = {k.split(".", 1)[1] for k in v.metrics if k.startswith(_PREFIXES)}
    known = [m for m in _GATE_METRICS if m in v.metrics or m in compared]
    held = known + sorted(compared - set(known))
    if held:
        lines.append("Held-out metrics (candidate / serving when trained / base):")
        for metric in held:
            values = [v.metrics.get(p + metric) for p in ("", *_PREFIXES)]
            shown = " / ".join("–" if x is None else f"{x:.3g}" for x in values)
            lines.append(
                f"  {_name(metric)}: {shown}" + (" ◀ decides" if metric == decides else "")
            )
    other = {
        k: val
        for k, val in v.metrics.items()
        if k not in held and k != _TRAINER_TIME and not k.startswith(_PREFIXES)
    }
    line = _settings_line("Training numbers", other)
    if line:
        lines.append(line)
    return lines
