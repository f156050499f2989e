"""The operator's console in a real browser: Debian's Chromium, driven by playwright, against a live stack
(LocalStack: redis-server, the emulator's portals, the HTTP app, a Celery worker). An operator signs in with
an admin key, finds a portal in reauth, resumes its parked jobs and sees them applied, replays a dead letter
and sees it applied, purges one; the console refuses a visitor without a key, a producer's key and a forged
CSRF token. Each page's screenshot is written to docs/console/ (the README links them).

Chromium comes from Debian (`make chromium`, which `make test` runs); playwright drives it as it is installed
(`executable_path`), never downloading a browser of its own. No skip: without Chromium these tests fail."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from edges.http import apikeys
from tasks import producer
from tests.integration.conftest import FAST
from workers.localdev.localstack import LocalStack
from workers.runtime import Runtime, get_runtime

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
#: flags for a closed network and a fresh profile: no sandbox (CI runs as root), no background fetches
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "console"
ADMIN, ADMIN_ENTRY = apikeys.new(admin=True)
PRODUCER, PRODUCER_ENTRY = apikeys.new()
REAUTH, HEALTHY = "parked.bitrix24.test", "dead.bitrix24.test"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    stack = LocalStack(settings={**FAST, "api_keys": f"{ADMIN_ENTRY},{PRODUCER_ENTRY}", "http_rate": 0.0})
    stack.__enter__()
    try:
        stack.start_workers(1, concurrency=8)
        stack.start_http()
        yield stack
    finally:
        stack.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    browser.clear_cookies()
    page = browser.new_page()
    page.set_default_timeout(30_000)
    yield page
    page.close()


def until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def states(rt: Runtime, ids: list[str]) -> set[str | None]:
    return {s for (s,) in rt.ledger.states(ids).values()}


def sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("input[name=key]", key)
    page.click("text=Sign in >> nth=-1")


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_refused_without_a_key_and_with_a_producers_key(stack: LocalStack, page: Page) -> None:
    base = stack.start_http().url
    page.goto(f"{base}/console/portals")
    expect(page).to_have_url(f"{base}/console/login")
    shot(page, "login")
    sign_in(page, base, "b24q_not-a-key")
    expect(page.get_by_role("alert")).to_contain_text("not a valid API key")
    sign_in(page, base, PRODUCER)
    expect(page.get_by_role("alert")).to_contain_text("not an admin key")
    page.goto(f"{base}/console/dead")
    expect(page).to_have_url(f"{base}/console/login")


def test_an_operator_resumes_a_reauth_portals_parked_jobs(stack: LocalStack, page: Page) -> None:
    rt = get_runtime()
    base = stack.start_http().url
    info = stack.add_portal(REAUTH)
    stack.emulator.admin("POST", f"portals/{REAUTH}/senders", {"code": "smsgw", "name": "SMS"})
    stack.emulator.admin("POST", f"portals/{REAUTH}/messages", {"code": "smsgw", "message_ids": ["p1", "p2"]})
    # credentials the portal no longer knows: the refresh answers invalid_grant, the portal goes to reauth
    rt.registry.add_oauth(
        REAUTH, info["client_endpoint"], "gone-access", "gone-refresh", time.time() - 60, domain=REAUTH
    )
    ids = [
        producer.enqueue_status_update(portal=REAUTH, code="smsgw", message_id=m, status="delivered")
        for m in ("p1", "p2")
    ]
    until(lambda: states(rt, ids) == {"parked"}, what="jobs parked")

    sign_in(page, base, ADMIN)
    page.fill("input[name=q]", REAUTH)
    page.click("text=Search")
    row = page.locator("tr", has_text=REAUTH)
    expect(row.locator("td.state")).to_have_text("reauth")
    shot(page, "portals")

    # the operator has the portal's admin reinstall the app; fresh tokens arrive (here: straight from the emulator)
    fresh = stack.emulator.admin("POST", f"portals/{REAUTH}/tokens", {})
    rt.registry.store_auth(REAUTH, fresh)
    row.get_by_role("link", name=REAUTH).click()
    page.get_by_role("button", name="Resume 2 parked job(s)").click()
    expect(page.get_by_role("status")).to_contain_text("2 parked job(s) resumed")
    until(lambda: states(rt, ids) == {"applied"}, what="resumed jobs applied")
    page.reload()
    expect(page.locator("[data-outcome=applied]")).to_have_text("2")
    expect(page.locator("table.recent td.outcome", has_text="applied")).to_have_count(2)
    shot(page, "portal")
    assert {s["message_id"] for s in stack.emulator.state(REAUTH)["statuses"]} >= {"p1", "p2"}


def test_an_operator_replays_one_dead_letter_and_purges_another(stack: LocalStack, page: Page) -> None:
    rt = get_runtime()
    base = stack.start_http().url
    stack.add_portal(HEALTHY)
    stack.emulator.admin("POST", f"portals/{HEALTHY}/senders", {"code": "smsgw", "name": "SMS"})
    replayed, purged = (
        producer.enqueue_status_update(portal=HEALTHY, code="smsgw", message_id=m, status="sent") for m in ("d1", "d2")
    )
    until(lambda: rt.dead.get(replayed) is not None and rt.dead.get(purged) is not None, what="dead letters")

    sign_in(page, base, ADMIN)
    page.goto(f"{base}/console/dead?portal={HEALTHY}")
    expect(page.locator(f"#letter-{replayed}")).to_contain_text("d1")
    # a forged CSRF token: the purge is refused and the letter stays
    page.locator(f"#letter-{purged} form[action$=purge] input[name=csrf]").evaluate("el => el.value = '0'.repeat(40)")
    page.locator(f"#letter-{purged}").get_by_role("button", name="Purge").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    assert rt.dead.get(purged) is not None

    page.goto(f"{base}/console/dead?portal={HEALTHY}")
    shot(page, "dead")
    stack.emulator.admin("POST", f"portals/{HEALTHY}/messages", {"code": "smsgw", "message_ids": ["d1"]})
    page.locator(f"#letter-{replayed}").get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("1 replayed")
    until(lambda: states(rt, [replayed]) == {"applied"}, what="replayed letter applied")
    assert rt.dead.get(replayed) is None

    page.locator(f"#letter-{purged}").get_by_role("button", name="Purge").click()
    expect(page.get_by_role("status")).to_contain_text("1 purged")
    expect(page.locator(f"#letter-{purged}")).to_have_count(0)
    assert rt.dead.get(purged) is None

    page.goto(f"{base}/console/jobs?id={replayed}")
    expect(page.locator("pre.report")).to_contain_text("applied")
    expect(page.locator("pre.report")).to_contain_text("replayed from dead letter")
    shot(page, "job")
    # the live panel fills itself in without a reload
    expect(page.locator("[data-rate=applied]")).not_to_have_text("–", timeout=15_000)
