"""The five job kinds, each a declaration (`JobKind`): its public and Celery task names, the REST method it
calls, its model (`tasks.models`), whether its calls may merge and which portal state it sets (the order
rules below). Everything else is shared by every kind: the pipeline (`workers.pipeline`: limit, pack, call),
the retry policy (`workers.retries`) and the outcome recorder (`workers.records.outcomes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError

from tasks.fields import Horizon, field_errors
from tasks.models import (
    DELIVERY_MERGE,
    DeliveryConfirmation,
    Job,
    MarkUnread,
    SenderAdd,
    SenderUpdate,
    StatusUpdate,
)
from workers.delivery.calls import MergeRule
from workers.delivery.ordering import OrderRule, StateKey
from workers.errors import JobRefused
from workers.portals.registry import PortalRegistry

# --- ordering: which portal state each kind sets (workers.delivery.ordering) ---------------------------

#: A message's status only moves forward: queued < sent < a final status (delivered, undelivered, failed).
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


def _status_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    return (StateKey(f"status:{str(job['code']).lower()}:{job['message_id']}"),)


def _status_rank(job: Mapping[str, Any]) -> int:
    return STATUS_RANK.get(str(job.get("status")), 0)


def _sender_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    code = str(job["code"]).lower()
    return tuple(StateKey(f"sender:{code}:{f}", (f.upper(),)) for f in ("handler", "name", "description") if f in job)


def _unread_keys(job: Mapping[str, Any]) -> tuple[StateKey, ...]:
    return (StateKey(f"unread:{job['dialog_id']}"),)


STATUS_ORDER = OrderRule(_status_keys, _status_rank)
#: per field: an older job's name still goes out after a newer job changed only the handler
SENDER_ORDER = OrderRule(_sender_keys)
UNREAD_ORDER = OrderRule(_unread_keys)


@dataclass(frozen=True)
class JobKind:
    """A job kind: its public name, Celery task name, REST method and model.

    `app_only` methods need application (OAuth) context and refuse webhook portals; `merge` says how
    calls of this kind may share one command of a batch (None: never); `order` which portal state a job
    sets, so that an older job never overwrites a newer one (None: repeats are harmless, e.g. delivery
    confirmations).
    """

    name: str
    task_name: str
    method: str
    model: type[Job]
    app_only: bool
    merge: MergeRule | None = None
    order: OrderRule | None = None
    #: held while the portal's SMS providers are being registered again after an app update
    waits_for_providers: bool = False
    #: error codes that mean the portal already is in the state the job wanted
    applied_codes: frozenset[str] = frozenset()
    #: what else an applied job means for the portal's record
    on_applied: Callable[[PortalRegistry, str, Job], None] | None = None

    def applied(self, registry: PortalRegistry, portal: str, job: Job) -> None:
        if self.on_applied is not None:
            self.on_applied(registry, portal, job)

    def validate(self, payload: Mapping[str, Any], horizon: Horizon | None = None) -> Job:
        """The job, or `JobRefused` naming each bad field and the rule it broke; with a `horizon`, an `at`
        beyond it is refused too (a job entering the queue)."""
        if not isinstance(payload, Mapping):
            raise JobRefused(self.name, [("(job)", f"a job is a JSON object of fields, not {type(payload).__name__}")])
        try:
            return self.model.model_validate(dict(payload), context={"horizon": horizon})
        except ValidationError as exc:
            raise JobRefused(self.name, field_errors(exc)) from None
        except TypeError as exc:  # payload not a mapping
            raise JobRefused(self.name, [("(job)", str(exc))]) from None

    ALL: ClassVar[dict[str, JobKind]]


STATUS_UPDATE = JobKind(
    "status-update",
    "b24q.status_update",
    "messageservice.message.status.update",
    StatusUpdate,
    app_only=True,
    order=STATUS_ORDER,
    waits_for_providers=True,
)
DELIVERY_CONFIRMATION = JobKind(
    "delivery-confirmation",
    "b24q.delivery_confirmation",
    "imconnector.send.status.delivery",
    DeliveryConfirmation,
    app_only=True,
    merge=DELIVERY_MERGE,
)
SENDER_UPDATE = JobKind(
    "sender-update",
    "b24q.sender_update",
    "messageservice.sender.update",
    SenderUpdate,
    app_only=True,
    order=SENDER_ORDER,
    waits_for_providers=True,
)


def _provider_ready(registry: PortalRegistry, portal: str, job: Job) -> None:
    registry.provider_ready(portal, str(getattr(job, "code", "")))


SENDER_ADD = JobKind(
    "sender-add",
    "b24q.sender_add",
    "messageservice.sender.add",
    SenderAdd,
    app_only=True,
    applied_codes=frozenset({"ERROR_SENDER_ALREADY_INSTALLED"}),
    on_applied=_provider_ready,
)
MARK_UNREAD = JobKind(
    "mark-unread", "b24q.mark_unread", "im.dialog.unread", MarkUnread, app_only=False, order=UNREAD_ORDER
)

KINDS: dict[str, JobKind] = {
    k.name: k for k in (STATUS_UPDATE, DELIVERY_CONFIRMATION, SENDER_UPDATE, SENDER_ADD, MARK_UNREAD)
}
KINDS_BY_TASK: dict[str, JobKind] = {k.task_name: k for k in KINDS.values()}
JobKind.ALL = KINDS
