"""A portal's state and the one table of what moves it.

`active`: its jobs go. `reauth`: its credentials are lost; its jobs park until new tokens arrive.
`uninstalled`: the application was removed from the portal; its jobs end as dead letters `APP_UNINSTALLED`,
and it stays so until an install (or an operator's fresh pair) brings it back. The registry applies the
table (`workers.portals.registry`); where a change must be atomic, its Lua script checks the states the
table lets the event apply in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class PortalState(enum.StrEnum):
    """As stored in the record's `state` field (a StrEnum: the stored strings are its values)."""

    ACTIVE = "active"
    REAUTH = "reauth"
    UNINSTALLED = "uninstalled"


#: Every state as stored, in order (the labels of the portal-state metric).
STATES: tuple[str, ...] = tuple(s.value for s in PortalState)


class PortalEvent(enum.Enum):
    """What happens to a portal that may change its state."""

    INSTALLED = "installed"  # the application's install event (a reinstall too)
    TOKENS_STORED = "tokens stored"  # a fresh pair from an auth block: an install, `b24q portal auth`, store_tokens
    TOKENS_ROTATED = "tokens rotated"  # a refresh's rotated pair, or a newer one an event carried
    CREDENTIALS_LOST = "credentials lost"  # the refresh or the portal refused them for good
    REACTIVATED = "reactivated"  # an operator fixed the credentials by hand
    UNINSTALLED = "uninstalled"  # the application's uninstall event


@dataclass(frozen=True)
class Transition:
    """The states an event applies in, and the state it leads to from each."""

    sources: frozenset[PortalState]
    target: PortalState


_ANY = frozenset(PortalState)
_ACTIVE, _REAUTH, _UNINSTALLED = PortalState.ACTIVE, PortalState.REAUTH, PortalState.UNINSTALLED

#: In a state outside an event's sources the event does not apply: the portal stays as it is. So an
#: uninstalled portal stays uninstalled until an install (or an operator's fresh pair): a refresh's or an
#: event's tokens and a lost credential (whose jobs would park instead of ending) do not bring it back.
TRANSITIONS: Mapping[PortalEvent, Transition] = {
    PortalEvent.INSTALLED: Transition(_ANY, _ACTIVE),
    PortalEvent.TOKENS_STORED: Transition(_ANY, _ACTIVE),
    PortalEvent.TOKENS_ROTATED: Transition(frozenset({_ACTIVE, _REAUTH}), _ACTIVE),
    PortalEvent.CREDENTIALS_LOST: Transition(frozenset({_ACTIVE, _REAUTH}), _REAUTH),
    PortalEvent.REACTIVATED: Transition(frozenset({_REAUTH}), _ACTIVE),
    PortalEvent.UNINSTALLED: Transition(_ANY, _UNINSTALLED),
}


def applies(state: PortalState, event: PortalEvent) -> bool:
    """Does `event` move a portal in `state` (else it stays as it is)?"""
    return state in TRANSITIONS[event].sources


def after(state: PortalState, event: PortalEvent) -> PortalState:
    """The state a portal in `state` is in after `event`."""
    return TRANSITIONS[event].target if applies(state, event) else state


def sources(event: PortalEvent) -> str:
    """The states `event` applies in, as the registry's Lua script takes them (space-separated)."""
    return " ".join(s.value for s in PortalState if s in TRANSITIONS[event].sources)
