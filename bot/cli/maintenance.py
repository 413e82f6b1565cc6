"""The non-serving subcommands: train, adapters, export, db. They print to stdout/stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bot.commands.args import version_arg
from bot.commands.views import SERVING_MARK, format_version, mark
from bot.errors import NothingToTrain, TrainingAlreadyRunning, VersionError
from bot.learning.adapter_files import adapter_files
from bot.learning.dataset import kto_rows, pair_rows, write_jsonl
from bot.learning.finetune import Finetuner
from bot.learning.protocol import Event, Phase, Start, Step
from bot.learning.versions import AdapterVersions, describe
from bot.settings import Settings
from bot.startup import open_adapter_files, open_repository, prepare_data_dir, resolve_model_dir
from bot.types import RunStatus
from migrations import head_revision, upgrade_database
from storage.db import create_engine, is_sqlite
from storage.repository import Repository


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _repo(settings: Settings) -> Repository:
    prepare_data_dir(settings)
    return await open_repository(settings)


class _ProgressBar:
    """The terminal's view of a run: a tqdm bar over the steps, named after the phase, and
    the admin messages written above it."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self.bar: Any = None

    async def on_event(self, event: Event) -> None:
        from tqdm import tqdm

        if isinstance(event, Start) and not self._quiet:
            total = event.total_steps
            self.bar = tqdm(total=total, desc="fine-tuning", unit="step", file=sys.stderr)
        elif isinstance(event, Phase) and self.bar is not None:
            self.bar.set_description(event.phase)  # reference, training, ...
        elif isinstance(event, Step) and self.bar is not None:
            self.bar.n = event.step
            self.bar.set_postfix(loss=event.loss)
            self.bar.refresh()

    async def notify(self, text: str) -> None:
        if not text.startswith("Training: step"):  # the bar shows those
            (self.bar.write if self.bar is not None else _err)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def train(settings: Settings, args: argparse.Namespace) -> int:
    """Fine-tune in the foreground with a progress bar; a running bot picks the result up at
    its next reply (it follows the active version in the database).

    Exit status: 0 trained (live, in an A/B test, or kept), 3 rejected by the gate, 1 failed,
    interrupted or nothing to train.
    """
    repo = await _repo(settings)
    progress = _ProgressBar(args.quiet)
    try:
        versions = AdapterVersions(repo, None, await open_adapter_files(settings))
        await versions.sync()

        async def model_dir() -> Path:
            # Only once there is something to train: a clear "nothing to train" comes first.
            return await resolve_model_dir(settings, progress=not args.quiet)

        finetuner = Finetuner(settings, repo, versions, model_dir)
        outcome = await finetuner.run(
            trigger="cli", requested_by="cli", notify=progress.notify, on_event=progress.on_event
        )
    except (NothingToTrain, TrainingAlreadyRunning) as exc:
        _err(f"selftune: {exc}")
        return 1
    finally:
        progress.close()
        await repo.aclose()
    if outcome.status is RunStatus.REJECTED:
        return 3
    return 0 if outcome.status is RunStatus.SUCCEEDED else 1


async def adapters(settings: Settings, args: argparse.Namespace) -> int:
    """List, activate or roll back. Exit status: 0 done, 1 refused (no such version, nothing
    to roll back), 2 a version argument that is not one (as argparse's usage errors)."""
    action = args.action or "list"
    try:  # a bad version number is refused before the database is opened
        target = _version(action, args)
    except VersionError as exc:
        _err(f"selftune: {exc}")
        return 2
    repo = await _repo(settings)
    versions = AdapterVersions(repo, None, adapter_files(settings))  # reached on activate only
    try:
        if action == "activate":
            await versions.activate(target)
            print(f"now serving {describe(target)}")
        elif action == "rollback":
            await versions.sync()
            now = await versions.rollback(target)
            print(f"rolled back: now serving {describe(now)}")
        else:
            active = await repo.adapters.active()
            rows = await repo.adapters.all()
            for version in rows:
                print(mark(version.active) + format_version(version))
            print(mark(active is None) + "base model (version 0)")
            print(f"{SERVING_MARK} = serving now")
        return 0
    except VersionError as exc:
        _err(f"selftune: {exc}")
        return 1
    finally:
        await repo.aclose()


def _version(action: str, args: argparse.Namespace) -> int | None:
    """The version an ``adapters`` action names, parsed as strictly as the chat's /activate.
    None: the base model for ``activate``; for ``rollback`` (no N, or 0) the previous one."""
    if action == "activate":
        return version_arg(args.version, "selftune adapters activate N")
    if action == "rollback":
        return version_arg(args.version or "0", "selftune adapters rollback [N]")
    return None


async def export(settings: Settings, args: argparse.Namespace) -> int:
    """Write every rated exchange as a JSONL row (TRL's KTO format; ``--with-meta``: with
    the exchange id, rater, adapter version and rating time); ``--pairs``: every preference
    pair instead (TRL's preference format)."""
    repo = await _repo(settings)
    try:
        if args.pairs:
            rows = list(pair_rows(await repo.training.pairs(), with_meta=args.with_meta))
        else:
            rows = list(kto_rows(await repo.training.rated(), with_meta=args.with_meta))
    finally:
        await repo.aclose()
    output: Path | None = args.output
    if output is None:
        count = write_jsonl(rows, sys.stdout)
        sys.stdout.flush()
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as handle:
            count = write_jsonl(rows, handle)
    what = "preference pair(s)" if args.pairs else "rated exchange(s)"
    _err(f"exported {count} {what}" + (f" to {output}" if output else ""))
    return 0


async def db(settings: Settings, args: argparse.Namespace) -> int:
    """``db upgrade``: apply pending migrations; ``db current``: show the revision, creating
    nothing (a data dir without a database says so); ``db backup PATH``: an online copy."""
    if args.action == "backup":
        from bot.cli.backup import backup

        return await backup(settings, args.path)
    if args.action == "current":
        return await _db_current(settings)
    prepare_data_dir(settings)
    engine = create_engine(settings.database_url)
    try:
        before = await upgrade_database(engine)
        print(f"database at revision {head_revision()} (was {before or 'empty'})")
    finally:
        await engine.dispose()
    return 0


async def _db_current(settings: Settings) -> int:
    from alembic.runtime.migration import MigrationContext

    missing = _missing_sqlite_file(settings.database_url)
    if missing is not None:
        # Connecting would create an empty file: say there is none instead.
        print(f"no database yet at {missing}; latest revision {head_revision()}")
        return 0
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
    print(f"database revision {current or 'none'}; latest {head_revision()}")
    return 0


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file of ``url`` when it does not exist yet; None for any other database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not is_sqlite(url) or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path
