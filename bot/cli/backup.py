"""``selftune db backup PATH``: a consistent copy of the database and the adapters, taken while
the bot runs.

SQLite: the online backup API (``sqlite3.Connection.backup``) copies the database in one step,
inside one read transaction, so the copy is the database as it was at one instant even while
the bot writes (WAL lets the writers go on meanwhile). Then the adapters folder is copied
beside it: adapter folders are complete once they exist (the trainer renames them into place)
and registered only after that, so every version the copied database names is in the copy.
PostgreSQL: ``pg_dump`` does this job better than we could; the command to run is printed.

README's "Backing up and restoring" says how to restore.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from bot.settings import Settings

DATABASE_FILE = "selftune.db"
ADAPTERS_DIR = "adapters"


@dataclass(frozen=True)
class Copied:
    """What a backup holds."""

    database: Path
    messages: int
    exchanges: int
    ratings: int
    adapters: int  # adapter folders copied


async def backup(settings: Settings, target: Path) -> int:
    """Back up into the new (or empty) folder ``target``; the exit status of the command."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        print(postgres_instructions(settings, target))
        return 1
    source = Path(url.database or "")
    if not source.is_file():
        print(f"selftune: there is no database at {source} to back up", file=sys.stderr)
        return 1
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        print(f"selftune: {target} exists and is not an empty folder", file=sys.stderr)
        return 1
    try:
        copied = await asyncio.to_thread(copy_all, source, settings.adapters_dir, target)
    except (OSError, sqlite3.Error) as exc:
        print(f"selftune: the backup failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {copied.messages} messages, {copied.exchanges} replies, {copied.ratings} "
        f"ratings to {copied.database} and {copied.adapters} adapter version(s) to "
        f"{target / ADAPTERS_DIR}"
    )
    return 0


def copy_all(database: Path, adapters: Path, target: Path) -> Copied:
    """The database, then the adapters (in that order: see the module's docstring)."""
    target.mkdir(parents=True, exist_ok=True)
    copied = copy_database(database, target / DATABASE_FILE)
    count = copy_adapters(adapters, target / ADAPTERS_DIR)
    return Copied(copied.database, copied.messages, copied.exchanges, copied.ratings, count)


def copy_database(source: Path, destination: Path) -> Copied:
    """SQLite's online backup of ``source`` into ``destination``, checked before it is named
    so: a file at ``destination`` is always a whole, consistent database."""
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    reader = sqlite3.connect(source, timeout=30)
    writer = sqlite3.connect(partial)
    try:
        reader.backup(writer)  # pages=-1: every page in one step, one read transaction
        writer.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        check = writer.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"the copy fails its integrity check: {check}")
        counts = [_count(writer, table) for table in ("messages", "exchanges", "ratings")]
    finally:
        writer.close()
        reader.close()
    os.replace(partial, destination)
    messages, exchanges, ratings = counts
    return Copied(destination, messages, exchanges, ratings, adapters=0)


def _count(connection: sqlite3.Connection, table: str) -> int:
    return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # our names only


def copy_adapters(source: Path, destination: Path) -> int:
    """Every finished adapter folder (not a trainer's ``*.partial``); how many."""
    if not source.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return 0
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("*.partial"))
    return sum(1 for entry in destination.iterdir() if entry.is_dir())


def postgres_instructions(settings: Settings, target: Path) -> str:
    """What to run for a PostgreSQL database (no password in it: pg_dump reads PGPASSWORD or
    ~/.pgpass)."""
    url = make_url(settings.database_url)
    plain = URL.create(  # no password (``set(password=None)`` would keep it)
        "postgresql", url.username, None, url.host, url.port, url.database
    ).render_as_string(hide_password=False)
    return (
        "selftune db backup copies SQLite databases; this one is PostgreSQL. Run instead:\n"
        f"  mkdir -p {target}\n"
        f"  pg_dump --format=custom --file={target / 'selftune.dump'} '{plain}'\n"
        f"  cp -a {settings.adapters_dir} {target / ADAPTERS_DIR}\n"
        "and to restore (the bot stopped):\n"
        f"  pg_restore --clean --if-exists --dbname='{plain}' {target / 'selftune.dump'}\n"
        f"  cp -a {target / ADAPTERS_DIR}/. {settings.adapters_dir}/"
    )
