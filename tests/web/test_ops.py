"""/healthz and /metrics."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from bot import metrics
from tests.web.support import World

Client = TestClient[web.Request, web.Application]


async def test_healthz_reports_each_part(client: Client, world: World) -> None:
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ok",
        "database": True,
        "generator": True,
        "adapters": {"telegram": True},
    }
    world.platforms["discord"] = False
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["status"] == "degraded"


async def test_healthz_when_the_database_is_gone(client: Client, world: World) -> None:
    await world.repo.aclose()
    (world.settings.data_dir.parent / "web.db").unlink()
    (world.settings.data_dir.parent / "web.db").mkdir()  # a directory: nothing can open it
    response = await client.get("/healthz")
    assert response.status == 503 and (await response.json())["database"] is False


async def test_metrics_with_a_session_or_the_bearer_token(
    client: Client, admin: Client, world: World
) -> None:
    metrics.record_reply("telegram", "answer", tokens=12, seconds=0.8, first_token_s=0.1)
    metrics.record_rating(1, "stored")
    metrics.record_run("succeeded")
    body = await (await admin.get("/metrics")).text()
    for name in (
        "selftune_replies_total",
        "selftune_tokens_total",
        "selftune_reply_seconds_bucket",
        "selftune_first_token_seconds_count",
        "selftune_queue_depth 3.0",
        "selftune_running_sequences 1.0",
        "selftune_ratings_total",
        "selftune_training_runs_total",
        'selftune_platform_connected{platform="telegram"} 1.0',
    ):
        assert name in body, name
    admin.session.cookie_jar.clear()
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert right.status == 200 and "selftune_tokens_total" in await right.text()
