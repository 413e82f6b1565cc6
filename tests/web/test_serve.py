"""``selftune run`` with ``web.enabled``: the dashboard is served by the bot's own loop, beside
the adapters, answers /healthz and /metrics, and is gone when the bot stops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

import bot.app
from bot.generation import ScriptedGenerator
from bot.settings import Settings
from bot.types import Vote
from tests.fakes.telegram_server import FakeTelegram, bot_settings
from tests.support.net import free_port


async def poll(get: Callable[[], Awaitable[Any]], until: Callable[[Any], bool]) -> Any:
    for _ in range(200):
        with contextlib.suppress(aiohttp.ClientError):
            found = await get()
            if until(found):
                return found
        await asyncio.sleep(0.05)
    raise TimeoutError("the dashboard never answered as expected")


async def test_selftune_run_serves_the_dashboard(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scripted(_settings: Settings, *, progress: bool = True) -> tuple[Any, Path]:
        return ScriptedGenerator(), tmp_path  # no model to load

    monkeypatch.setattr(bot.app, "load_generator", scripted)
    port = free_port()
    web = settings.web.model_copy(
        update={"enabled": True, "port": port, "metrics_token": SecretStr("scrape-me")}
    )
    async with FakeTelegram() as tg:
        configured = settings.model_copy(update={"web": web, "telegram": bot_settings(tg)})
        serving = asyncio.create_task(bot.app.serve(configured, "run"))
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def health() -> tuple[int, Any]:
                    async with http.get(f"{base}/healthz") as response:
                        return response.status, await response.json()

                _status, body = await poll(health, lambda found: found[0] == 200)
                assert body == {
                    "status": "ok",
                    "database": True,
                    "generator": True,
                    "adapters": {"telegram": True},
                }
                await _chat_and_rate(tg)
                auth = {"Authorization": "Bearer scrape-me"}
                async with http.get(f"{base}/metrics", headers=auth) as response:
                    assert response.status == 200
                    exposition = await response.text()
                async with http.get(f"{base}/metrics") as response:
                    assert response.status == 401
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    _check_exposition(exposition)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # stopped with the bot


def _check_exposition(exposition: str) -> None:
    """The reply, the rating and the connected platform are counted (printed for the note)."""
    print("\n".join(line for line in exposition.splitlines() if line.startswith("selftune_")))
    assert 'selftune_replies_total{outcome="answer",platform="telegram"}' in exposition
    assert 'selftune_ratings_total{action="stored",vote="up"}' in exposition
    assert 'selftune_platform_connected{platform="telegram"} 1.0' in exposition


async def _chat_and_rate(tg: FakeTelegram) -> None:
    from tests.adapters.telegram.test_ratings import press

    ann = tg.user(1001, "Ann")
    tg.push_text(tg.private_chat(ann), ann, "Hello")
    await tg.reply(1001)
    assert await press(tg, ann, tg.bot_messages(1001)[-1], Vote.UP) == "Thanks! Rated 👍."
