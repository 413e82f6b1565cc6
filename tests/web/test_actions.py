"""Curation, blocking and adapter actions: each changes what it says, is recorded in the
audit log with the operator's key, and is respected by what training reads."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.web.support import ADMIN, World, csrf_of

Client = TestClient[web.Request, web.Application]


async def act(client: Client, path: str, **fields: str) -> str:
    """POST ``path`` from a page's form (its CSRF token) and return the page it leads to."""
    csrf = csrf_of(await (await client.get("/ratings")).text())
    response = await client.post(path, data={"csrf": csrf, "back": "/audit", **fields})
    assert response.status == 200, await response.text()
    return await response.text()


async def test_flip_a_rating(admin: Client, world: World) -> None:
    before = {r.exchange_id: r.label for r in await world.repo.training.rated()}
    page = await act(admin, "/ratings/1/flip")
    assert "Rating #1 is now 👎" in page
    after = {r.exchange_id: r.label for r in await world.repo.training.rated()}
    assert after[world.exchanges[0]] is not before[world.exchanges[0]]
    [entry] = await world.repo.curation.audit()
    assert (entry.actor, entry.action, entry.target) == (ADMIN, "rating.flip", "rating:1")
    assert entry.detail == {"exchange_id": world.exchanges[0], "before": 1, "after": -1}


async def test_drop_a_rating_and_never_train_on_an_exchange(admin: Client, world: World) -> None:
    await act(admin, "/ratings/1/drop")
    await act(admin, f"/exchanges/{world.exchanges[1]}/never-train")
    rated = {r.exchange_id for r in await world.repo.training.rated()}
    assert rated == {world.exchanges[2]}
    actions = [e.action for e in await world.repo.curation.audit()]
    assert actions == ["exchange.never_train", "rating.drop"]
    summary = await world.repo.curation.summary_since(None)
    assert summary == {"exchange.never_train": 1, "rating.drop": 1}


async def test_block_a_user(admin: Client, world: World) -> None:
    page = await act(admin, "/users/block", user_key="discord:7", blocked="1")
    assert "discord:7 is blocked" in page
    assert await world.repo.curation.is_blocked("discord:7")
    assert "discord:7" not in {r.user_key for r in await world.repo.training.rated()}
    [entry] = await world.repo.curation.audit()
    assert (entry.actor, entry.action, entry.target) == (ADMIN, "user.block", "user:discord:7")
    await act(admin, "/users/block", user_key="discord:7", blocked="0")
    assert not await world.repo.curation.is_blocked("discord:7")
    assert "discord:7" in {r.user_key for r in await world.repo.training.rated()}


async def test_exclude_a_users_ratings(admin: Client, world: World) -> None:
    await act(admin, "/users/exclude", user_key="telegram:10", excluded="1")
    assert {r.user_key for r in await world.repo.training.rated()} == {"discord:7"}
    assert not await world.repo.curation.is_blocked("telegram:10")
    assert [e.action for e in await world.repo.curation.audit()] == ["user.exclude_ratings"]


async def test_roll_back_an_adapter(admin: Client, world: World) -> None:
    assert world.versions.current == 2
    page = await act(admin, "/adapters/rollback")
    assert "Rolled back from adapter v2: now serving adapter v1" in page
    assert world.versions.current == 1
    assert (await world.repo.adapters.active()).version == 1  # type: ignore[union-attr]
    [entry] = await world.repo.curation.audit()
    assert (entry.actor, entry.action, entry.detail) == (
        ADMIN,
        "adapter.rollback",
        {"before": 2, "after": 1},
    )


async def test_activate_then_serve_the_base_model(admin: Client, world: World) -> None:
    await act(admin, "/adapters/activate", version="3")
    assert world.versions.current == 3
    await act(admin, "/adapters/activate", version="")
    assert world.versions.current is None
    details = [e.detail for e in await world.repo.curation.audit(action="adapter.")]
    assert details == [{"before": 3, "after": None}, {"before": 2, "after": 3}]


async def test_an_ab_test_from_start_to_promotion(admin: Client, world: World) -> None:
    page = await act(admin, "/ab/start", version="3", share="0.3")
    assert "A/B test #1 started: v3 serves 30% of chats" in page
    running = await world.repo.ab.running()
    assert running is not None and running.started_by == ADMIN
    page = await act(admin, "/ab/promote")
    assert "Promoted: v3 now serves every chat" in page
    assert world.versions.current == 3
    actions = [e.action for e in await world.repo.curation.audit()]
    assert actions == ["ab.promote", "ab.start"]


async def test_a_refused_action_says_why_and_changes_nothing(admin: Client, world: World) -> None:
    page = await act(admin, "/ab/retire")
    assert "No A/B test is running" in page and 'class="flash error"' in page
    page = await act(admin, "/ratings/999/flip")
    assert "There is no rating #999" in page
    assert await world.repo.curation.audit() == []


async def test_a_malformed_field_is_a_bad_request(admin: Client) -> None:
    csrf = csrf_of(await (await admin.get("/ratings")).text())
    response = await admin.post("/adapters/activate", data={"csrf": csrf, "version": "x"})
    assert response.status == 400
