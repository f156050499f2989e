"""The registry's side of the application lifecycle: aliases, install, uninstall, domain moves, newer tokens
from events, and what the producer and the pipeline do with an uninstalled portal (real Redis)."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import pytest

from edges.lifecycle import Lifecycle, install_auth, plan_of
from emulator import Emulator
from tasks.jobs import KINDS
from tasks.producer import check, enqueue
from workers.bitrix.client import Credentials
from workers.bitrix.querystring import decode, encode
from workers.errors import JobDeadLettered, PortalUninstalled, UnknownPortal
from workers.pipeline import run_job
from workers.runtime import Runtime
from workers.settings import Settings

ENDPOINT = "https://acme.bitrix24.de/rest/"


def auth(**extra: Any) -> dict[str, Any]:
    return {
        "access_token": "A1",
        "refresh_token": "R1",
        "expires": time.time() + 3600,
        "client_endpoint": ENDPOINT,
        "member_id": "m-acme",
        "domain": "acme.bitrix24.de",
        **extra,
    }


def test_forms_decode_php_brackets_and_round_trip() -> None:
    body = "event=ONAPPINSTALL&data%5BVERSION%5D=3&auth%5Bmember_id%5D=m1&auth%5Bscope%5D=im%2Cimopenlines&x[]=a&x[]=b"
    assert decode(body) == {
        "event": "ONAPPINSTALL",
        "data": {"VERSION": "3"},
        "auth": {"member_id": "m1", "scope": "im,imopenlines"},
        "x": {"0": "a", "1": "b"},
    }
    nested = {"auth": {"a": "1", "b": {"c": "2"}}, "e": "x"}
    assert decode(encode(nested)) == nested
    with pytest.raises(ValueError, match="deeper"):
        decode("a" + "[x]" * 9 + "=1")
    with pytest.raises(ValueError):
        decode("&".join(f"f{i}=1" for i in range(1001)))


def test_a_redirect_names_the_new_endpoint() -> None:
    oauth = Credentials("http://127.0.0.1:5/old.test/rest/", "t")
    assert (
        oauth.moved("http://127.0.0.1:5/new.test/rest/batch", "batch").endpoint == "http://127.0.0.1:5/new.test/rest/"
    )
    assert oauth.moved("http://127.0.0.1:5/new.test/rest/app.info.json", "app.info").endpoint.endswith(
        "/new.test/rest/"
    )
    assert Credentials("https://a.bitrix24.de/rest/", "t").moved("https://b.bitrix24.de/", "x").endpoint == (
        "https://b.bitrix24.de/rest/"
    )
    hook = Credentials("http://127.0.0.1:5/old.test/rest/1/c0de/")
    assert hook.moved("http://127.0.0.1:5/new.test/rest/1/c0de/im.dialog.unread?a=1", "im.dialog.unread").endpoint == (
        "http://127.0.0.1:5/new.test/rest/1/c0de/"
    )


def test_plans_come_from_the_license_family() -> None:
    assert plan_of({"LICENSE": "de_ent250", "LICENSE_FAMILY": "ent"}) == "enterprise"
    assert plan_of({"LICENSE": "en_pro100", "LICENSE_FAMILY": "pro"}) == "standard"
    assert plan_of({"LICENSE": "ru_selfhosted"}) == "box"
    assert plan_of({}) is None


def test_the_installer_page_post_becomes_an_auth_block() -> None:
    form = {"AUTH_ID": "A", "REFRESH_ID": "R", "AUTH_EXPIRES": "3600", "member_id": "m", "APPLICATION_TOKEN": "T"}
    block = install_auth(form, {"DOMAIN": "x.bitrix24.de", "PROTOCOL": "1"})
    assert block["client_endpoint"] == "https://x.bitrix24.de/rest/"
    assert (block["access_token"], block["refresh_token"], block["application_token"]) == ("A", "R", "T")


def test_install_registers_aliases_and_an_override_stays(runtime: Runtime) -> None:
    reg = runtime.registry
    portal = reg.install("m-acme", auth(), "APPTOKEN", "2", "enterprise")
    assert (portal.plan, portal.plan_from, portal.app_version, portal.state) == ("enterprise", "license", "2", "active")
    assert portal.application_token == "APPTOKEN"
    assert "APPTOKEN" not in repr(portal) and "application_token" not in portal.public()
    assert reg.resolve("acme.bitrix24.de") == "m-acme" and reg.resolve("ACME.bitrix24.de") == "m-acme"
    assert reg.resolve("m-acme") == "m-acme" and reg.resolve("nobody") is None

    reg.add_oauth("hand", ENDPOINT, "A", "R", time.time() + 60, plan="standard")
    again = reg.install("hand", auth(member_id="m-hand", domain="hand.bitrix24.de"), "T2", "2", "enterprise")
    assert (again.plan, again.plan_from) == ("standard", "operator")  # an operator's --plan stays

    assert reg.remove("m-acme")
    assert reg.resolve("acme.bitrix24.de") is None


def test_producers_name_a_portal_by_domain_and_the_message_carries_its_key(runtime: Runtime) -> None:
    runtime.registry.install("m-acme", auth(), "T", "1", None)
    kwargs = check("status-update", {"portal": "acme.bitrix24.de", "code": "sms", "message_id": "1", "status": "sent"})
    assert kwargs["portal"] == "m-acme"
    with pytest.raises(UnknownPortal):
        check("status-update", {"portal": "other.bitrix24.de", "code": "sms", "message_id": "1", "status": "sent"})


def test_hosts_a_portal_may_have(runtime: Runtime) -> None:
    reg = runtime.registry
    assert reg.host_allowed("https://x.bitrix24.de/rest/")
    assert reg.host_allowed("https://x.bitrix24.com.br/rest/")
    assert not reg.host_allowed("https://evil.example.com/rest/")
    assert not reg.host_allowed("https://bitrix24.de.evil.example.com/rest/")
    assert reg.host_allowed("https://crm.example.com/rest/", current="https://crm.example.com/rest/")


def test_a_move_is_stored_once_and_never_off_the_allowed_hosts(runtime: Runtime) -> None:
    reg = runtime.registry
    reg.install("m-acme", auth(), "T", "1", None)
    assert not reg.move("m-acme", ENDPOINT, "https://evil.example.com/rest/")
    assert reg.move("m-acme", ENDPOINT, "https://acme2.bitrix24.de/rest/")
    assert not reg.move("m-acme", ENDPOINT, "https://acme3.bitrix24.de/rest/")  # someone moved it already
    portal = reg.get("m-acme")
    assert portal is not None and portal.endpoint == "https://acme2.bitrix24.de/rest/"
    assert portal.domain == "acme2.bitrix24.de" and reg.resolve("acme2.bitrix24.de") == "m-acme"


def test_an_event_never_rolls_tokens_back(runtime: Runtime) -> None:
    reg = runtime.registry
    reg.install("m-acme", auth(), "T", "1", None)
    now = time.time()
    assert reg.offer_auth("m-acme", auth(access_token="A2", refresh_token="R2", expires=now + 7200))
    assert not reg.offer_auth("m-acme", auth(access_token="OLD", refresh_token="OLDR", expires=now + 3600))
    portal = reg.get("m-acme")
    assert portal is not None and (portal.access_token, portal.refresh_token) == ("A2", "R2")


def test_uninstall_erases_tokens_ends_parked_jobs_and_refuses_new_ones(runtime: Runtime) -> None:
    reg = runtime.registry
    reg.install("m-acme", auth(), "T", "1", None)
    job = {"portal": "m-acme", "code": "sms", "message_id": "1", "status": "sent"}
    runtime.parking.park("m-acme", "job-1", "b24q.status_update", job)
    runtime.ledger.started("job-1", "status-update", "m-acme", "")

    refused = Lifecycle(runtime).handle(
        {"event": "ONAPPUNINSTALL", "auth": {"member_id": "m-acme", "application_token": "FORGED"}}
    )
    assert (refused.result, refused.status) == ("refused", 401)
    assert (reg.get("m-acme") or pytest.fail()).state == "active"

    done = Lifecycle(runtime).handle(
        {"event": "ONAPPUNINSTALL", "data": {"CLEAN": "0"}, "auth": {"member_id": "m-acme", "application_token": "T"}}
    )
    assert done.result == "applied"
    portal = reg.get("m-acme")
    assert portal is not None and portal.state == "uninstalled"
    assert (portal.access_token, portal.refresh_token) == ("", "")
    assert runtime.parking.count("m-acme") == 0
    letter = runtime.dead.get("job-1")
    assert letter is not None and letter.code == "APP_UNINSTALLED"
    assert not reg.mark_reauth("m-acme", "invalid_grant")  # stays uninstalled
    with pytest.raises(PortalUninstalled):
        enqueue("status-update", job)

    def retry(countdown: float, exc: BaseException) -> NoReturn:
        raise AssertionError("an uninstalled portal's job is not retried")

    runtime.portals.forget("m-acme")
    with pytest.raises(JobDeadLettered) as dead:
        run_job(KINDS["status-update"], "job-2", (), job, runtime.job_services, retry)
    assert dead.value.code == "APP_UNINSTALLED"


def test_an_install_takes_over_a_portal_added_by_hand(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.settings, "portal_hosts", "127.0.0.1")
    with Emulator(client_id="app.test", client_secret="s3cr3t-client") as emu:
        first = emu.add_portal("acme.bitrix24.test", plan="enterprise")
        runtime.registry.add_oauth(
            "acme", first.client_endpoint, first.access_token, first.refresh_token, first.expires
        )
        again = emu.issue_tokens("acme.bitrix24.test")  # what the install event carries
        auth_block = {k: v for k, v in again.to_dict().items() if k in ("access_token", "refresh_token", "expires")}
        auth_block |= {"client_endpoint": again.client_endpoint, "member_id": again.member_id}
        form = {"event": "ONAPPINSTALL", "data": {"VERSION": "1"}, "auth": {**auth_block, "application_token": "T"}}
        outcome = Lifecycle(runtime).handle(form)  # app.info answered by the emulator
    assert (outcome.result, outcome.portal) == ("applied", "acme"), outcome
    assert runtime.registry.keys() == ["acme"]  # one portal, one bucket
    assert runtime.registry.resolve(again.member_id) == "acme"
    portal = runtime.registry.get("acme")
    assert portal is not None and (portal.access_token, portal.plan) == (again.access_token, "enterprise")


def test_a_providers_setting_that_is_not_a_list_of_providers_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="JSON"):
        Settings(providers="[{code: x}]")
    with pytest.raises(ValueError, match="list"):
        Settings(providers='{"code": "x"}')
    assert Settings(providers='[{"code": "sms", "name": "SMS", "handler": "https://s.example.com/h"}]').providers
