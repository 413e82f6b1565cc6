"""The dashboard in a real headless Chromium (Selenium + Debian's chromium-driver): log in by
a one-time link, browse a chat, flip a rating, block a user, roll back an adapter; every main
page is saved as a screenshot under ``$SELFTUNE_SCREENSHOTS`` (else the test's temp dir), and
the folder is printed."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.learning.protocol import Step
from bot.types import RunStatus
from tests.support.net import free_port
from tests.web.support import ADMIN, World

pytestmark = pytest.mark.slow


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if chromium and driver:
        return chromium, driver
    reason = "no headless browser: apt-get install chromium chromium-driver; pip install selenium"
    if os.environ.get("PYTEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required here (PYTEST_REQUIRE_BROWSER=1): {reason}")
    pytest.skip(reason)


def _driver(chromium: str, chromedriver: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(chromedriver))


def _session(browser: Any, base: str, link: str, shots: Path) -> None:
    """The operator's visit, in the browser (blocking: runs in a thread)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shot(name: str) -> None:
        browser.save_screenshot(str(shots / f"{name}.png"))

    def flash() -> str:
        text: str = browser.find_element(By.ID, "flash").text
        return text

    def press(xpath: str) -> None:
        browser.find_element(By.XPATH, xpath).click()

    browser.implicitly_wait(5)  # a click navigates: wait for the next page's elements
    browser.get(link)
    shot("01-login-link")
    browser.find_element(By.ID, "login").click()
    # The click navigates; the title changes when the next page has loaded (implicit waits
    # cover element look-ups only).
    WebDriverWait(browser, 10).until(lambda b: "Overview" in b.title)
    shot("02-overview")
    browser.get(base + "/chats")
    shot("03-conversations")
    browser.find_element(By.LINK_TEXT, "telegram:10").click()
    assert "<script>" in browser.find_element(By.TAG_NAME, "main").text  # shown as text
    press("(//span[@class='rating']//button[text()='flip'])[1]")
    assert "is now 👎" in flash()
    shot("04-transcript")
    _block_and_roll_back(browser, base, shots)
    _tour(browser, base, shots)


def _block_and_roll_back(browser: Any, base: str, shots: Path) -> None:
    """Block a user on the users page, then roll the serving adapter back."""
    from selenium.webdriver.common.by import By

    browser.get(base + "/users")
    browser.find_element(By.XPATH, "//tr[@id='u-discord:7']//button[text()='block']").click()
    assert browser.find_element(By.ID, "flash").text == "discord:7 is blocked."
    browser.save_screenshot(str(shots / "05-users.png"))
    browser.get(base + "/adapters")
    browser.find_element(By.XPATH, "//button[text()='roll back']").click()
    assert "now serving adapter v1" in browser.find_element(By.ID, "flash").text
    assert browser.find_element(By.ID, "serving").text == "v1"
    browser.save_screenshot(str(shots / "06-adapters.png"))


def _tour(browser: Any, base: str, shots: Path) -> None:
    """The remaining pages, each saved as a screenshot; the audit log names every action."""
    from selenium.webdriver.common.by import By

    for name, path in (
        ("07-ratings", "/ratings"),
        ("08-runs", "/runs"),
        ("09-run", "/runs/1"),
        ("10-stats", "/stats"),
        ("11-audit", "/audit"),
    ):
        browser.get(base + path)
        browser.save_screenshot(str(shots / f"{name}.png"))
    audit = browser.find_element(By.TAG_NAME, "main").text
    for action in ("rating.flip", "user.block", "adapter.rollback"):
        assert action in audit


async def _finished_run(world: World) -> None:
    run_id = await world.repo.runs.start("manual", ADMIN, 1)
    world.training.running = True
    for step in range(1, 21):
        world.training.progress = Step(step, 20, loss=1.0 / (1 + step / 4))
        await world.dashboard.context.sampler.sample()
    report = {
        "data": {
            "ratings": 3,
            "train": {"liked": 2, "disliked": 1},
            "users": 2,
            "heldout": {"liked": 0, "disliked": 0},
            "heldout_pool": 0,
            "dropped": {"empty reply": 1},
        },
        "gate": {"verdict": "pass", "reason": "kto_loss 0.41 < 0.52"},
    }
    await world.repo.runs.finish(
        run_id, RunStatus.SUCCEEDED, "Adapter v3 is live.", adapter_version=3, report=report
    )
    world.training.running = False


async def test_an_operator_in_a_real_browser(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium, chromedriver = _browser_or_skip()
    shots = Path(os.environ.get("SELFTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    await _finished_run(world)
    port = free_port()
    settings = world.settings.model_copy(
        update={"web": world.settings.web.model_copy(update={"port": port})}
    )
    world.dashboard.context.deps.settings = settings
    runner = await world.dashboard.start()
    try:
        browser = await asyncio.to_thread(_driver, chromium, chromedriver)
        visit: Callable[[], None] = lambda: _session(  # noqa: E731
            browser, f"http://127.0.0.1:{port}", world.dashboard.issue_login_link(ADMIN), shots
        )
        try:
            await asyncio.to_thread(visit)
        finally:
            await asyncio.to_thread(browser.quit)
    finally:
        await world.dashboard.stop()
    assert runner is not None
    assert world.versions.current == 1 and await world.repo.curation.is_blocked("discord:7")
    with capsys.disabled():
        print(f"\nscreenshots of the dashboard: {shots}")
    assert len(list(shots.glob("*.png"))) == 11
