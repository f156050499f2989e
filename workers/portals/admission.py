"""May a job go to its portal? The one answer, from the portal's record as read.

Examples:
    >>> from workers.portals.record import Portal
    >>> from workers.portals.state import PortalState
    >>> admission(None, "acme")
    Refusal(code='UNKNOWN_PORTAL', description="portal 'acme' is not in the registry", park=False)
    >>> admission(Portal("acme", "oauth", "https://acme.bitrix24.com/rest/", state=PortalState.REAUTH,
    ...                  reason="invalid_grant: refresh token expired"), "acme").park
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workers.portals.record import Portal
from workers.portals.state import PortalState
from workers.retries import UNINSTALLED

RefusalCode = Literal["UNKNOWN_PORTAL", "WRONG_AUTH_TYPE", "APP_UNINSTALLED", "REAUTH_NEEDED"]


@dataclass(frozen=True)
class Refusal:
    """Why a job may not go now: `park` keeps it until the portal is re-authorised; otherwise it ends with
    `code` (a worker's dead letter; the producer's refusal)."""

    code: RefusalCode
    description: str
    park: bool = False


def admission(portal: Portal | None, key: str, method: str = "", app_only: bool = False) -> Refusal | None:
    """None if a job for portal `key` calling `method` may go to it, else why not.

    Parameters:
        portal: the record as read (None: no portal by that name); which read is the caller's choice: a
            refusal from a cached record may be worth asking again with a fresh one (a reinstall a moment
            ago ends `uninstalled`).
        key: the name the job gave its portal (in the descriptions).
        method: the REST method the job calls (in the descriptions).
        app_only: the method needs an application's (OAuth) context.

    In this order, the first that holds:

    - no record: `UNKNOWN_PORTAL`, "portal 'KEY' is not in the registry";
    - a webhook portal and an application-only method: `WRONG_AUTH_TYPE`,
      "METHOD needs application (OAuth) context; KEY is a webhook";
    - `uninstalled`: `APP_UNINSTALLED`, "the application was uninstalled from the portal; replay after a reinstall";
    - `reauth`: park (`REAUTH_NEEDED`), described by the reason the record gives for its state.
    """
    if portal is None:
        return Refusal("UNKNOWN_PORTAL", f"portal {key!r} is not in the registry")
    if app_only and portal.kind == "webhook":
        return Refusal("WRONG_AUTH_TYPE", f"{method} needs application (OAuth) context; {key} is a webhook")
    if portal.state == PortalState.UNINSTALLED:
        return Refusal("APP_UNINSTALLED", UNINSTALLED.description)
    if portal.state == PortalState.REAUTH:
        return Refusal("REAUTH_NEEDED", portal.reason, park=True)
    return None
