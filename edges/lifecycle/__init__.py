"""The Bitrix24 application's lifecycle: install, update and uninstall events, and the auth blocks of
other events (bitrix24-facts.md §7). The HTTP routes (`edges.http`) only parse and answer; what an event
means for a portal is decided here, so a command or a test can drive it without HTTP.

Trust: an install names its portal and carries a fresh access token; it is believed once one `app.info`
call with that token, on the portal it names, succeeds (§7.3: the docs say to validate the install's
token against the API). Every later event must carry the `application_token` stored at install, compared
in constant time; an update carries a *new* one (§7.3), so an update whose token differs is believed
only if its access token works on the portal as registered. Nothing an unproven event says is acted on.

The package: `events.py` (what each event does: `Lifecycle`, `Outcome`, the install's auth block and plan),
`verification.py` (the one portal call an unproven event may cost, and when it is made), `providers.py`
(what an install or update sets up on the portal: its event handlers and SMS providers).
"""

from edges.lifecycle.events import Lifecycle, Outcome, install_auth, plan_of

__all__ = ["Lifecycle", "Outcome", "install_auth", "plan_of"]
