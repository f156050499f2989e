"""Hooks into the job lifecycle, for metrics and anything else that watches b24q.

The outcome recorder (`workers.records.outcomes`), the lanes, the token keeper and the lifecycle call
`events.<hook>(...)` at each step; an
`Observer` subclass overrides the hooks it cares about and is added with `add_observer`. The
default is to do nothing, so the core carries no dependency on any metrics library, and a failing
observer is logged, never allowed to fail a job. (dramatiq's middleware, reduced to what b24q needs.)
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Observer:
    """Override what you need; every hook must be cheap and must not raise."""

    def job_started(self, kind: str, portal: str) -> None:
        """A worker picked a job up (every run, retries included)."""

    def job_finished(self, kind: str, portal: str, outcome: str, latency: float | None) -> None:
        """The job ended: outcome is applied, dead or parked; latency is enqueue→now in seconds."""

    def job_retried(self, kind: str, portal: str, reason: str, code: str) -> None:
        """A retry was scheduled; reason is `flow` (limits: not a failure) or `transient`."""

    def dead_letter(self, kind: str, portal: str, code: str) -> None:
        """A job went to the dead letters with this reason."""

    def rest_request(self, portal: str, method: str, commands: int, code: str, seconds: float) -> None:
        """One HTTP request to a portal (method is `batch` for packed requests); code is `ok` or the error."""

    def limiter_wait(self, portal: str, seconds: float) -> None:
        """A lane waited this long for its portal's slot."""

    def refused_503(self, portal: str) -> None:
        """The portal answered QUERY_LIMIT_EXCEEDED."""

    def operating_hold(self, portal: str, method: str, until: float) -> None:
        """A method was held for a portal by the operating-time limit."""

    def token_refresh(self, portal: str, outcome: str) -> None:
        """outcome: refreshed, refused (re-authorisation needed) or unavailable."""

    def parked(self, portal: str) -> None:
        """A job was parked because its portal needs re-authorisation."""

    def portal_moved(self, portal: str) -> None:
        """A portal answered with a redirect to its new domain, and requests now go there."""

    def app_event(self, event: str, outcome: str) -> None:
        """An application event arrived (ONAPPINSTALL, ...): outcome is `applied`, `ignored` or
        `refused` (its application_token or auth did not prove it came from the portal)."""


class _Fanout(Observer):
    def __init__(self) -> None:
        self._observers: list[Observer] = []
        self._lock = threading.Lock()

    def add(self, observer: Observer) -> None:
        with self._lock:
            self._observers = [*self._observers, observer]

    def remove(self, observer: Observer) -> None:
        with self._lock:
            self._observers = [o for o in self._observers if o is not observer]

    def __getattribute__(self, name: str) -> object:
        hook = getattr(Observer, name, None)
        if name.startswith("_") or hook is None or not callable(hook):
            return object.__getattribute__(self, name)
        observers = object.__getattribute__(self, "_observers")

        def fanout(*args: object, **kwargs: object) -> None:
            for observer in observers:
                try:
                    getattr(observer, name)(*args, **kwargs)
                except Exception:
                    log.exception("observer %r failed in %s", observer, name)

        return fanout


#: What the core calls.
events = _Fanout()


def add_observer(observer: Observer) -> None:
    events.add(observer)


def remove_observer(observer: Observer) -> None:
    events.remove(observer)
