"""The operator's console (`edges/http/console.py`) on a real uvicorn server with a real httpx client: who may
sign in (an admin key only), the session cookie's attributes, CSRF on every action, each page's content with
secrets masked, bounded pages, the actions' effects on the stores, and a 503 page when Redis is gone. The
browser tests (tests/browser) drive the same pages in Chromium against a live stack."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest

from edges import cli
from edges.http import apikeys
from edges.http.app import create_app
from tests.test_http_intake import Server
from workers.celery import configure
from workers.runtime import Runtime
from workers.settings import Settings, get_settings

ADMIN, ADMIN_ENTRY = apikeys.new(admin=True)
PRODUCER, PRODUCER_ENTRY = apikeys.new()
SECRET_TOKEN = "tok-9f2a-very-secret"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": f"{ADMIN_ENTRY},{PRODUCER_ENTRY}", "http_rate": 0.0})


@pytest.fixture
def rt(runtime: Runtime, settings: Settings) -> Iterator[Runtime]:
    configure(settings)
    runtime.registry.add_oauth("m-acme", "http://127.0.0.1:9/acme/rest/", "acc-1", "ref-1", 4102444800.0)
    runtime.registry.set_aliases("m-acme", "acme.bitrix24.test")
    runtime.registry.add_oauth("m-globex", "http://127.0.0.1:9/g/rest/", "acc-2", "ref-2", 4102444800.0)
    runtime.registry.mark_reauth("m-globex", "invalid_grant: the refresh token was revoked")
    for n in range(3):
        runtime.dead.add(
            f"dead-{n}",
            "b24q.status_update",
            "status-update",
            "m-acme",
            {"portal": "m-acme", "code": "smsgw", "message_id": f"x{n}", "status": "delivered"}
            | ({"auth": {"access_token": SECRET_TOKEN}} if n == 2 else {}),
            "ERROR_MESSAGE_NOT_FOUND" if n < 2 else "INVALID_PAYLOAD",
            f"no message x{n}; access_token={SECRET_TOKEN}",
            1,
        )
    yield runtime
    configure(get_settings())


@pytest.fixture
def server(rt: Runtime) -> Iterator[Server]:
    server = Server(create_app(lambda: rt))
    yield server
    server.stop()


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def operator(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/console/login", data={"key": ADMIN})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/portals"
        yield client


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def test_only_an_admin_key_signs_in_and_the_cookie_is_locked_down(anonymous: httpx.Client) -> None:
    assert anonymous.get("/console/portals").headers["location"] == "/console/login"
    assert anonymous.post("/console/login", data={"key": "b24q_wrong"}).status_code == 401
    refused = anonymous.post("/console/login", data={"key": PRODUCER})
    assert refused.status_code == 403 and "not an admin key" in refused.text
    assert "set-cookie" not in refused.headers
    signed = anonymous.post("/console/login", data={"key": ADMIN})
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie and "max-age=" in cookie
    assert "secure" not in cookie  # plain http on loopback; over https it is set
    page = anonymous.get("/console/portals")
    assert page.status_code == 200 and "m-acme" in page.text
    assert "'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"


def test_a_forged_or_expired_cookie_is_no_session(anonymous: httpx.Client, operator: httpx.Client) -> None:
    value = operator.cookies["b24q_console"]
    key_id, expires, nonce, mac = value.split(".")
    for forged in (f"{key_id}.{int(expires) + 99}.{nonce}.{mac}", f"{key_id}.1.{nonce}.{mac}", "x"):
        anonymous.cookies.set("b24q_console", forged, path="/console")
        assert anonymous.get("/console/portals").status_code == 303


def test_every_action_needs_the_sessions_csrf_token(rt: Runtime, operator: httpx.Client) -> None:
    page = operator.get("/console/dead")
    real = csrf(page)
    for token in ("", "0" * 40, real[:-1] + ("1" if real.endswith("0") else "0")):
        answer = operator.post("/console/dead/purge", data={"id": "dead-0", "csrf": token})
        assert answer.status_code == 403
    assert rt.dead.get("dead-0") is not None
    with httpx.Client(base_url=str(operator.base_url)) as stranger:  # a token without its session
        assert stranger.post("/console/dead/purge", data={"id": "dead-0", "csrf": real}).status_code == 401
    assert rt.dead.get("dead-0") is not None
    done = operator.post("/console/dead/purge", data={"id": "dead-0", "csrf": real})
    assert done.status_code == 303 and rt.dead.get("dead-0") is None


def test_pages_show_states_and_reasons_with_secrets_masked(rt: Runtime, operator: httpx.Client) -> None:
    portals = operator.get("/console/portals")
    assert 'class="state-reauth"' in portals.text and "invalid_grant" in portals.text
    found = operator.get("/console/portals", params={"q": "acme.bitrix24.test"})
    assert "m-acme" in found.text and "m-globex" not in found.text
    dead = operator.get("/console/dead", params={"reason": "ERROR_MESSAGE_NOT_FOUND"})
    assert "dead-0" in dead.text and "dead-1" in dead.text and "dead-2" not in dead.text
    assert "INVALID_PAYLOAD <b>1</b>" in dead.text
    one = operator.get("/console/portals/m-acme")
    job = operator.get("/console/jobs", params={"id": "dead-1"})
    assert "ERROR_MESSAGE_NOT_FOUND" in job.text and "x1" in job.text
    for page in (dead, one, job):
        assert page.status_code == 200
        assert SECRET_TOKEN not in page.text
    assert operator.get("/console/jobs", params={"id": "nope"}).text.count("No job nope") == 1


def test_the_job_page_is_what_b24q_job_show_prints(
    rt: Runtime, operator: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    rt.ledger.enqueued("j-1", "status-update", "m-acme")
    rt.ledger.finish("j-1", "m-acme", "dead", error="ERROR_X")
    assert cli.main(["job", "show", "j-1"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    page = operator.get("/console/jobs", params={"id": "j-1"}).text
    shown = re.search(r'<pre class="report">(.*?)</pre>', page, re.S)
    assert shown and html.unescape(shown.group(1)) == printed


def test_replay_and_purge_all_of_a_filter(rt: Runtime, operator: httpx.Client) -> None:
    token = csrf(operator.get("/console/dead"))
    answer = operator.post(
        "/console/dead/replay", data={"all": "1", "reason": "ERROR_MESSAGE_NOT_FOUND", "csrf": token}
    )
    assert answer.status_code == 303 and "2+replayed" in answer.headers["location"]
    assert rt.dead.ids() == ["dead-2"]
    assert {rt.ledger.record(i)["state"] for i in ("dead-0", "dead-1")} == {"queued"}
    operator.post("/console/dead/purge", data={"all": "1", "reason": "", "csrf": token})
    assert rt.dead.count() == 0


def test_resume_marks_the_portal_active_and_requeues_its_parked_jobs(rt: Runtime, operator: httpx.Client) -> None:
    rt.parking.park(
        "m-globex",
        "p-1",
        "b24q.status_update",
        {"portal": "m-globex", "code": "smsgw", "message_id": "a", "status": "sent"},
    )
    page = operator.get("/console/portals/m-globex")
    assert "Resume 1 parked job(s)" in page.text
    answer = operator.post("/console/portals/m-globex/resume", data={"csrf": csrf(page)})
    assert answer.status_code == 303
    assert "1 parked job(s) resumed" in operator.get(answer.headers["location"]).text
    assert rt.parking.count("m-globex") == 0 and rt.registry.get("m-globex").state == "active"  # type: ignore[union-attr]
    assert rt.ledger.record("p-1")["state"] == "queued"


def test_a_portal_page_lists_its_recent_jobs_newest_first(rt: Runtime, operator: httpx.Client) -> None:
    for n in range(25):
        rt.ledger.enqueued(f"r-{n}", "status-update", "m-acme")
        rt.ledger.finish(f"r-{n}", "m-acme", "applied" if n % 2 else "dead", error="" if n % 2 else "ERROR_X")
    rt.ledger.enqueued("other", "status-update", "m-globex")
    rt.ledger.finish("other", "m-globex", "applied")
    assert [j["id"] for j in rt.ledger.recent("m-acme")] == [f"r-{n}" for n in range(24, 4, -1)]
    page = operator.get("/console/portals/m-acme").text
    table = page[page.index('class="recent"') : page.index("Parked jobs")]
    assert table.index("r-24") < table.index("r-23") and "r-4<" not in table and "other" not in table
    assert table.count('<td class="outcome">dead</td>') == 10


def test_the_portal_list_is_paginated(rt: Runtime, operator: httpx.Client) -> None:
    for n in range(120):
        rt.registry.add_oauth(f"p{n:03}", "http://127.0.0.1:9/p/rest/", "a", "r", 4102444800.0)
    first = operator.get("/console/portals")
    assert "page 1 of 3" in first.text and first.text.count('<tr class="state-') == 50
    last = operator.get("/console/portals", params={"page": "3"})
    assert last.text.count('<tr class="state-') == 122 - 100


def test_live_counts_need_a_session(rt: Runtime, anonymous: httpx.Client, operator: httpx.Client) -> None:
    assert anonymous.get("/console/live.json").status_code == 401
    rt.ledger.enqueued("j-2", "status-update", "m-acme")
    rt.ledger.finish("j-2", "m-acme", "applied")
    rt.limiter.set_full("m-acme", rt.registry.get("m-acme").limits(rt.settings))  # type: ignore[union-attr]
    live = operator.get("/console/live.json").json()
    assert live["applied"] == 1 and live["dead_letters"] == 3 and live["refused_503"] == 1


def test_a_console_page_without_redis_is_a_503_page(rt: Runtime, operator: httpx.Client, redis_server: object) -> None:
    import redis as redis_lib

    broken = Runtime(rt.settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))
    server = Server(create_app(lambda: broken))
    try:
        with httpx.Client(base_url=server.url, timeout=30, cookies=operator.cookies) as client:
            answer = client.get("/console/dead")
            assert answer.status_code == 503 and "Redis does not answer" in answer.text
    finally:
        server.stop()
    assert redis_lib  # the module the route catches from


def test_apikey_new_admin_prints_an_admin_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["apikey", "new", "--admin"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"b24q_\S+", out)
    entry = re.search(r"[0-9a-f]{64}:\*admin", out)
    assert key and entry
    found = apikeys.identify(apikeys.parse(entry.group(0)), key.group(0))
    assert found is not None and found.admin and found.portals is None
    Settings(api_keys=entry.group(0))  # the settings accept it


def test_dead_letter_pages_and_counts_are_chosen_in_redis(rt: Runtime) -> None:
    for n in range(7):
        rt.dead.add(f"more-{n}", "b24q.status_update", "status-update", "m-globex", {"n": n}, "ACCESS_DENIED", "", 1)
    page = rt.dead.page(code="ACCESS_DENIED", offset=5, limit=5)
    assert page.total == 7 and [d.id for d in page.letters] == ["more-1", "more-0"]  # newest first
    page = rt.dead.page(offset=0, limit=2)
    assert page.total == 10 and [d.id for d in page.letters] == ["more-6", "more-5"]
    assert page.by_reason == {"ACCESS_DENIED": 7, "ERROR_MESSAGE_NOT_FOUND": 2, "INVALID_PAYLOAD": 1}
    assert rt.dead.page(portal="m-acme", code="INVALID_PAYLOAD").total == 1
    assert rt.dead.counts() == {"ERROR_MESSAGE_NOT_FOUND": 2, "INVALID_PAYLOAD": 1, "ACCESS_DENIED": 7}
    assert rt.dead.counts_by_portal() == {"m-acme": 3, "m-globex": 7}
    assert rt.dead.counts_by_portal(["m-acme", "nobody"]) == {"m-acme": 3}


def test_the_cookie_is_secure_behind_an_https_proxy(anonymous: httpx.Client) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback (its default forwarded_allow_ips): the proxy's scheme
    signed = anonymous.post("/console/login", data={"key": ADMIN}, headers={"X-Forwarded-Proto": "https"})
    assert signed.status_code == 303 and "secure" in signed.headers["set-cookie"].lower()
