"""A portal's state: the table of its transitions, the registry applying it, and whether a job may go."""

from __future__ import annotations

import time

import pytest

from workers.portals.admission import Refusal, admission
from workers.portals.record import Portal
from workers.portals.state import STATES, TRANSITIONS, PortalEvent, PortalState, after, applies
from workers.runtime import Runtime

A, R, U = PortalState.ACTIVE, PortalState.REAUTH, PortalState.UNINSTALLED
E = PortalEvent

#: (state before, event, state after): every pair, so that a change to the table shows up here
TABLE = [
    (A, E.INSTALLED, A),
    (R, E.INSTALLED, A),
    (U, E.INSTALLED, A),
    (A, E.TOKENS_STORED, A),
    (R, E.TOKENS_STORED, A),
    (U, E.TOKENS_STORED, A),  # an operator's fresh pair (`b24q portal auth`) is an install by hand
    (A, E.TOKENS_ROTATED, A),
    (R, E.TOKENS_ROTATED, A),
    (U, E.TOKENS_ROTATED, U),  # an event's late pair never brings an uninstalled portal back
    (A, E.CREDENTIALS_LOST, R),
    (R, E.CREDENTIALS_LOST, R),
    (U, E.CREDENTIALS_LOST, U),  # its jobs end as dead letters instead of parking
    (A, E.REACTIVATED, A),
    (R, E.REACTIVATED, A),
    (U, E.REACTIVATED, U),  # only an install brings it back
    (A, E.UNINSTALLED, U),
    (R, E.UNINSTALLED, U),
    (U, E.UNINSTALLED, U),
]


def test_the_table_covers_every_state_and_event() -> None:
    assert {(s, e) for s, e, _ in TABLE} == {(s, e) for s in PortalState for e in PortalEvent}
    assert set(TRANSITIONS) == set(PortalEvent)
    assert STATES == ("active", "reauth", "uninstalled")  # as stored: the values are the Redis field's


@pytest.mark.parametrize(("before", "event", "expected"), TABLE)
def test_transition(before: PortalState, event: PortalEvent, expected: PortalState) -> None:
    assert after(before, event) is expected
    assert applies(before, event) == (before in TRANSITIONS[event].sources)


def _registry_in(runtime: Runtime, state: PortalState) -> None:
    reg = runtime.registry
    reg.add_oauth("acme", "https://acme.bitrix24.de/rest/", "A1", "R1", time.time() + 3600)
    if state is R:
        assert reg.mark_reauth("acme", "invalid_grant: gone")
    elif state is U:
        reg.mark_uninstalled("acme")


def _state(runtime: Runtime) -> PortalState:
    portal = runtime.registry.get("acme")
    assert portal is not None
    return portal.state


@pytest.mark.parametrize("before", list(PortalState))
def test_the_registry_applies_the_table(runtime: Runtime, before: PortalState) -> None:
    reg = runtime.registry
    _registry_in(runtime, before)
    assert _state(runtime) is before
    assert reg.mark_reauth("acme", "lost") == applies(before, E.CREDENTIALS_LOST)
    assert _state(runtime) is after(before, E.CREDENTIALS_LOST)

    reg.remove("acme")
    _registry_in(runtime, before)
    assert reg.mark_active("acme") == applies(before, E.REACTIVATED)
    assert _state(runtime) is after(before, E.REACTIVATED)

    reg.remove("acme")
    _registry_in(runtime, before)
    newer = {"access_token": "A2", "refresh_token": "R2", "expires": time.time() + 7200}
    assert reg.offer_auth("acme", newer) == applies(before, E.TOKENS_ROTATED)
    assert _state(runtime) is after(before, E.TOKENS_ROTATED)


def test_a_missing_portal_gets_no_partial_record(runtime: Runtime) -> None:
    reg = runtime.registry
    assert not reg.mark_reauth("nobody", "lost")
    assert not reg.mark_active("nobody")
    reg.mark_uninstalled("nobody")
    assert reg.get("nobody") is None


def test_a_portal_read_back_has_a_typed_state(runtime: Runtime) -> None:
    _registry_in(runtime, R)
    portal = runtime.registry.get("acme")
    assert (
        portal is not None and portal.state is R and portal.state == "reauth" and portal.reason == "invalid_grant: gone"
    )


OAUTH = Portal("acme", "oauth", "https://acme.bitrix24.de/rest/")
WEBHOOK = Portal("hook", "webhook", "https://hook.bitrix24.de/rest/1/secret/")


@pytest.mark.parametrize(
    ("portal", "app_only", "expected"),
    [
        (None, False, Refusal("UNKNOWN_PORTAL", "portal 'acme' is not in the registry")),
        (OAUTH, True, None),
        (WEBHOOK, False, None),
        (
            WEBHOOK,
            True,
            Refusal(
                "WRONG_AUTH_TYPE",
                "imconnector.send.status.delivery needs application (OAuth) context; acme is a webhook",
            ),
        ),
        (
            Portal("acme", "oauth", "https://acme.bitrix24.de/rest/", state=U),
            False,
            Refusal("APP_UNINSTALLED", "the application was uninstalled from the portal; replay after a reinstall"),
        ),
        (
            Portal("acme", "oauth", "https://acme.bitrix24.de/rest/", state=R, reason="invalid_grant: gone"),
            False,
            Refusal("REAUTH_NEEDED", "invalid_grant: gone", park=True),
        ),
        (  # the method's auth type is decided before the state
            Portal("acme", "webhook", "https://acme.bitrix24.de/rest/1/s/", state=U),
            True,
            Refusal(
                "WRONG_AUTH_TYPE",
                "imconnector.send.status.delivery needs application (OAuth) context; acme is a webhook",
            ),
        ),
    ],
)
def test_admission(portal: Portal | None, app_only: bool, expected: Refusal | None) -> None:
    assert admission(portal, "acme", "imconnector.send.status.delivery", app_only) == expected
