"""Nothing without a session but /healthz; one-time links; CSRF; escaping; rate limit."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.web.actions import ROUTES
from bot.web.server import _PAGES
from tests.web.conftest import PASSWORD, login_by_link
from tests.web.support import ADMIN, XSS, World, csrf_of

Client = TestClient[web.Request, web.Application]
PAGES = [p.replace("{key}", "telegram:10").replace("{run_id}", "1") for p in _PAGES]
ACTIONS = [
    p.replace("{rating_id}", "1").replace("{exchange_id}", "1") for p in [*ROUTES, "/logout"]
]


@pytest.mark.parametrize("path", PAGES)
async def test_a_page_without_a_session_redirects_to_login(client: Client, path: str) -> None:
    response = await client.get(path, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == f"/login?next={path}"


@pytest.mark.parametrize("path", ACTIONS)
async def test_an_action_without_a_session_is_refused(
    client: Client, world: World, path: str
) -> None:
    response = await client.post(path, data={"user_key": "telegram:10"}, allow_redirects=False)
    assert response.status == 401
    assert await world.repo.curation.audit() == []


async def test_healthz_needs_no_session_and_metrics_do(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 401


async def test_a_login_link_works_once(client: Client, world: World) -> None:
    link = world.dashboard.issue_login_link(ADMIN)
    assert await login_by_link(client, link) == 303
    assert (await client.get("/", allow_redirects=False)).status == 200
    client.session.cookie_jar.clear()
    assert await login_by_link(client, link) == 403  # replayed
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_an_expired_or_forged_link_is_refused(client: Client, world: World) -> None:
    signer = world.dashboard.context.signer
    expired = signer.sign("login", {"u": ADMIN, "n": "n1"}, ttl_s=-1)
    forged = signer.sign("login", {"u": ADMIN, "n": "n2"}, 60)[:-3] + "AAA"
    session_token = signer.sign("session", {"u": ADMIN, "n": "n3"}, 60)  # another purpose
    for token in (expired, forged, session_token):
        assert await login_by_link(client, f"http://x/login/link?t={quote(token)}") == 403
    page = await client.get(f"/login/link?t={quote(expired)}")
    assert page.status == 403 and "expired" in await page.text()


async def test_only_admins_get_links_and_sessions(client: Client, world: World) -> None:
    with pytest.raises(PermissionError):
        world.dashboard.issue_login_link("telegram:10")
    token = world.dashboard.context.signer.sign("login", {"u": "telegram:10", "n": "x"}, 60)
    assert await login_by_link(client, f"http://x/login/link?t={quote(token)}") == 403


async def test_a_post_without_its_csrf_token_is_refused(admin: Client, world: World) -> None:
    wrong = await admin.post("/ratings/1/flip", data={"csrf": "nope"}, allow_redirects=False)
    missing = await admin.post("/ratings/1/flip", data={}, allow_redirects=False)
    assert wrong.status == missing.status == 403
    assert await world.repo.curation.audit() == []
    csrf = csrf_of(await (await admin.get("/ratings")).text())
    done = await admin.post("/ratings/1/flip", data={"csrf": csrf}, allow_redirects=False)
    assert done.status == 303


@pytest.mark.parametrize(
    "path",
    [
        "/chats/telegram:10",
        "/ratings",
        f"/chats?q={quote(XSS)}",
        f"/ratings?user={quote(XSS)}",
        "/",
    ],
)
async def test_a_stored_script_renders_as_text(admin: Client, path: str) -> None:
    page = await (await admin.get(path)).text()
    assert "<script>" not in page
    if path != "/":
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


async def test_the_session_cookie_is_httponly_and_samesite(client: Client, world: World) -> None:
    link = world.dashboard.issue_login_link(ADMIN)
    token = link.split("t=", 1)[1]
    from urllib.parse import unquote

    response = await client.post("/login/link", data={"t": unquote(token)}, allow_redirects=False)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_password_login_and_its_rate_limit(client: Client) -> None:
    good = await client.post(
        "/login", data={"password": PASSWORD, "next": "/users"}, allow_redirects=False
    )
    assert good.status == 303 and good.headers["Location"] == "/users"
    client.session.cookie_jar.clear()
    statuses = [(await client.post("/login", data={"password": "guess"})).status for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    late = await client.post("/login", data={"password": PASSWORD}, allow_redirects=False)
    assert late.status == 429  # the right password too, until the minute passes


async def test_login_redirects_stay_on_the_site(client: Client) -> None:
    response = await client.post(
        "/login", data={"password": PASSWORD, "next": "//evil.example/"}, allow_redirects=False
    )
    assert response.headers["Location"] == "/"


async def test_secrets_never_appear_in_a_page(admin: Client, world: World) -> None:
    web = world.settings.web
    secrets = [web.metrics_token.get_secret_value()] if web.metrics_token else []
    secrets.append(web.password_hash.get_secret_value() if web.password_hash else "")
    key_file = (world.settings.data_dir / "web-secret.key").read_text()
    for path in [*PAGES, "/healthz"]:
        page = await (await admin.get(path)).text()
        for secret in [*secrets, key_file]:
            assert secret not in page, path


async def test_every_response_carries_the_security_headers(admin: Client) -> None:
    for path in ("/", "/login", "/healthz"):
        headers = (await admin.get(path)).headers
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"


def test_signed_tokens_expire(world: World) -> None:
    signer = world.dashboard.context.signer
    token = signer.sign("flash", {"m": "hi"}, 0.01)
    assert signer.load("flash", token) == {"m": "hi", "exp": pytest.approx(time.time(), abs=1)}
    time.sleep(0.02)
    assert signer.load("flash", token) is None
