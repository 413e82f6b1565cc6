"""Every page renders what it promises from a seeded database."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.learning.protocol import Step
from bot.types import RunStatus
from tests.web.support import World

Client = TestClient[web.Request, web.Application]


async def text(client: Client, path: str) -> str:
    response = await client.get(path)
    assert response.status == 200, path
    return await response.text()


async def test_overview(admin: Client, world: World) -> None:
    page = await text(admin, "/")
    assert "tiny-llama" in page and "Serving <strong>v2</strong>" in page
    assert re.search(r"Queue depth</dt><dd>3<", page)
    assert re.search(r"Chats active \(last hour\)</dt><dd>2<", page)
    assert 'telegram: <span class="good">connected' in page


async def test_overview_follows_a_training_run(admin: Client, world: World) -> None:
    world.training.running = True
    world.training.progress = Step(3, 10, loss=0.75)
    page = await text(admin, "/")
    assert "step 3/10" in page and "loss 0.750" in page
    assert 'http-equiv="refresh"' in page


async def test_conversations_by_platform_and_search(admin: Client) -> None:
    page = await text(admin, "/chats")
    assert "telegram:10" in page and "discord:5" in page
    page = await text(admin, "/chats?platform=discord")
    assert "discord:5" in page and "telegram:10</a>" not in page
    page = await text(admin, "/chats?q=joke")
    assert "discord:5" in page and "telegram:10</a>" not in page


async def test_a_transcript_shows_ratings_versions_and_prompts(admin: Client) -> None:
    page = await text(admin, "/chats/discord:5")
    assert "tell me a joke" in page and "A joke." in page
    assert "by <strong>v1</strong>" in page
    assert "the exact prompt (2 turns)" in page and "You are helpful." in page
    assert "Bob" in page and "👍" in page
    assert (await admin.get("/chats/nowhere:0")).status == 404


async def test_ratings_filters(admin: Client, world: World) -> None:
    assert (await text(admin, "/ratings")).count('<tr id="r') == 3
    assert (await text(admin, "/ratings?label=down")).count('<tr id="r') == 1
    assert (await text(admin, "/ratings?user=discord:7")).count('<tr id="r') == 1
    assert (await text(admin, "/ratings?chat=telegram:10")).count('<tr id="r') == 2
    assert (await text(admin, "/ratings?version=1")).count('<tr id="r') == 1
    assert (await text(admin, "/ratings?version=0")).count('<tr id="r') == 2
    assert (await text(admin, "/ratings?until=2000-01-01")).count('<tr id="r') == 0
    assert (await text(admin, "/ratings?since=2000-01-01")).count('<tr id="r') == 3
    assert (await admin.get("/ratings?since=yesterday")).status == 400


async def test_users(admin: Client, world: World) -> None:
    await world.repo.set_training_opt_out("discord:7", True)
    await world.repo.curation.set_user("spam:1", "telegram:1", blocked=True)
    page = await text(admin, "/users")
    assert "telegram:10" in page and "opted out" in page
    assert "spam:1" in page and "no stored data" in page


async def test_adapters_as_a_lineage_tree(admin: Client) -> None:
    page = await text(admin, "/adapters")
    nested = re.search(r'id="v1".*<ul>.*id="v2".*<ul>.*id="v3"', page, re.S)
    assert nested, "v3 under v2 under v1"
    assert "kto_loss improved" in page and "learned from 2 exchanges" in page


async def test_training_runs_with_a_loss_curve_and_the_report(admin: Client, world: World) -> None:
    run_id = await world.repo.runs.start("manual", "telegram:1", 1)
    world.training.running = True
    sampler = world.dashboard.context.sampler
    for step, loss in ((1, 0.9), (2, 0.6), (3, 0.4)):
        world.training.progress = Step(step, 3, loss=loss)
        await sampler.sample()
    report = {
        "data": {"ratings": 3, "train": {"liked": 2, "disliked": 1}, "dropped": {"empty reply": 1}},
        "gate": {"verdict": "pass", "reason": "better"},
    }
    await world.repo.runs.finish(run_id, RunStatus.SUCCEEDED, "done", report=report)
    assert f'href="/runs/{run_id}"' in await text(admin, "/runs")
    page = await text(admin, f"/runs/{run_id}")
    assert "<polyline" in page and "empty reply" in page and "better" in page
    assert "took" in page
    assert (await admin.get("/runs/999")).status == 404


async def test_stats_chart(admin: Client) -> None:
    page = await text(admin, "/stats")
    assert "<svg" in page and "v1" in page and "base" in page and "v1, v2, v3 live" in page
