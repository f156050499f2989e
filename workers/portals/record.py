"""One portal's record: its fields, how they are stored in its Redis hash, and its view without secrets.

A portal is named by a stable key of the user's choosing (its member_id or domain); jobs carry that key,
never a token. Two kinds:

- `oauth`: an application installed on the portal: `client_endpoint` plus an access/refresh pair
  that `workers.portals.tokens` renews. Required for every method but `im.dialog.unread`.
- `webhook`: an incoming webhook URL `https://{portal}/rest/{user}/{code}/`.

Secrets are kept out of `repr`, logs and CLI output, and with `B24Q_TOKEN_KEYS` set they are encrypted at
rest (`workers.portals.crypto`): the access and refresh tokens of OAuth portals and the URL (with its secret
code) of webhook portals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from workers.bitrix.client import Credentials
from workers.errors import ConfigError
from workers.portals.crypto import TokenCipher
from workers.portals.limits import Limits
from workers.portals.state import PortalState
from workers.redaction import webhook_url
from workers.settings import Settings

#: Fields encrypted at rest (`endpoint` only for webhook portals: its path holds the webhook's secret code).
#: `application_token` proves an event comes from Bitrix24 (bitrix24-facts.md §7.3): a secret as well.
SECRET_FIELDS = ("access_token", "refresh_token", "application_token")


def secret_fields(kind: str) -> tuple[str, ...]:
    """The fields of a record of this kind that are encrypted at rest."""
    return (*SECRET_FIELDS, "endpoint") if kind == "webhook" else SECRET_FIELDS


@dataclass(frozen=True)
class Portal:
    """One portal's record (`state`: `workers.portals.state`).

    Set by the application's lifecycle (`edges.lifecycle`): `application_token`, `app_version`, the plan
    read from the license (`plan_from` = `license`; an operator's `--plan` is `operator` and stays), the
    SMS providers the portal should have (`providers`, JSON) and those not registered yet
    (`providers_pending`, codes separated by spaces: its status jobs wait until it is empty).
    """

    key: str
    kind: Literal["oauth", "webhook"]
    endpoint: str
    access_token: str = field(default="", repr=False)
    refresh_token: str = field(default="", repr=False)
    expires: float = 0.0
    member_id: str = ""
    domain: str = ""
    plan: str = "standard"
    rate: float = 0.0
    burst: int = 0
    state: PortalState = PortalState.ACTIVE
    reason: str = ""
    added_at: float = 0.0
    updated_at: float = 0.0
    application_token: str = field(default="", repr=False)
    app_version: str = ""
    plan_from: str = "default"
    providers: str = ""
    providers_pending: str = ""

    def credentials(self) -> Credentials:
        if self.kind == "webhook":
            return Credentials(self.endpoint)
        return Credentials(self.endpoint, self.access_token)

    def limits(self, settings: Settings) -> Limits:
        return Limits.of(self.plan, self.rate, self.burst, settings)

    def provider_list(self, settings: Settings) -> list[dict[str, Any]]:
        """The SMS providers this portal should have: its own list, else `B24Q_PROVIDERS`."""
        raw = self.providers or settings.providers
        if not raw.strip():
            return []
        value = json.loads(raw)
        if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
            raise ConfigError("providers must be a JSON list of {code, name, handler, description?}")
        return [dict(p) for p in value]

    def public(self) -> dict[str, Any]:
        """The record without secrets, for the CLI and status views."""
        out = asdict(self)
        out.pop("access_token")
        out.pop("refresh_token")
        out.pop("application_token")
        if self.kind == "webhook":
            out["endpoint"] = webhook_url(self.endpoint)
        return out

    def stored(self, cipher: TokenCipher) -> dict[str, str]:
        """The record as its Redis hash holds it: every field a string, the secrets encrypted."""
        mapping = {k: str(v) for k, v in asdict(self).items()}
        for name in secret_fields(self.kind):
            mapping[name] = cipher.encrypt(mapping[name])
        return mapping

    @classmethod
    def from_stored(cls, raw: dict[bytes, bytes], cipher: TokenCipher) -> Portal:
        """The record a Redis hash holds (`stored`), its secrets decrypted; fields it lacks take their defaults."""
        data = {k.decode(): v.decode() for k, v in raw.items()}
        key = data["key"]
        for name in secret_fields(data.get("kind", "")):
            if name in data:
                data[name] = cipher.decrypt(data[name], f"portal {key!r} {name}")
        return cls(
            key=key,
            kind=data["kind"],  # type: ignore[arg-type]
            endpoint=data["endpoint"],
            access_token=data.get("access_token", ""),
            refresh_token=data.get("refresh_token", ""),
            expires=float(data.get("expires") or 0),
            member_id=data.get("member_id", ""),
            domain=data.get("domain", ""),
            plan=data.get("plan", "standard"),
            rate=float(data.get("rate") or 0),
            burst=int(float(data.get("burst") or 0)),
            state=PortalState(data.get("state") or PortalState.ACTIVE),  # as the registry's Lua reads it too
            reason=data.get("reason", ""),
            added_at=float(data.get("added_at") or 0),
            updated_at=float(data.get("updated_at") or 0),
            application_token=data.get("application_token", ""),
            app_version=data.get("app_version", ""),
            plan_from=data.get("plan_from", "default"),
            providers=data.get("providers", ""),
            providers_pending=data.get("providers_pending", ""),
        )
