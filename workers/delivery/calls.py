"""A call: one job's REST call on its way to the portal, and how calls share one command of a batch.

`Call` is plain data that a lane (`workers.delivery.lane`) sends and resolves; it holds no reference to
the services that move it. Calls another worker process holds are marked `remote`: their outcome goes
back through the pool-wide call queue (`workers.delivery.callpool`).

A `MergeRule` is declared by a job kind (`tasks.jobs`): calls of its method whose key params are equal
join their list param into one command, and a merged command that did not succeed is split so that
each member learns its own outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.bitrix.client import CallResult
from workers.delivery.ordering import Order


@dataclass(frozen=True)
class MergeRule:
    """Calls with equal `keys` params share one call whose `items` list joins theirs; the merged call
    succeeded only if its result's `success` field is `true` (Bitrix24 can answer 200 with `false`)."""

    keys: tuple[str, ...]
    items: str
    success: str

    def succeeded(self, result: Any) -> bool:
        return isinstance(result, Mapping) and result.get(self.success) is True

    def as_list(self) -> list[Any]:
        """JSON-safe form (the pool-wide call queue carries rules between processes)."""
        return [list(self.keys), self.items, self.success]

    @classmethod
    def from_list(cls, data: Sequence[Any] | None) -> MergeRule | None:
        if not data:
            return None
        keys, items, success = data
        return cls(tuple(keys), str(items), str(success))


@dataclass(eq=False)
class Finish:
    """A job whose record the lane that sends its call marks applied, with the other jobs of the request in one
    round trip, when the answer says it is (a busy portal's job then makes no round trip of its own after its
    call; a quiet one's is the same one)."""

    job_id: str
    #: raises if a successful answer still means failure (the job kind's `check_result`)
    check: Callable[[Any], None]
    #: set by the lane, before the call's outcome: the record says applied
    done: bool = False


@dataclass(eq=False)  # identity: a queue removes this call, not one with equal fields
class Call:
    """One job's call waiting in a lane."""

    method: str
    params: Mapping[str, Any]
    merge: MergeRule | None = None
    order: Order | None = None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: CallResult | BaseException | None = None
    sent: bool = False
    cancelled: bool = False
    solo: bool = False  # never merged again (its merged call failed; it goes alone to learn its own outcome)
    # in a pool-wide lane: the call's id, the worker that holds its job, the worker sending it, and
    # whether the job is another process's (its outcome then goes back through the call pool)
    id: str = ""
    owner: str = ""
    taker: str | None = None
    remote: bool = False
    #: this process's job, whose record the lane may finish (`Finish`); None: the job records its own outcome
    finish: Finish | None = None

    def resolve(self, outcome: CallResult | BaseException) -> None:
        self.outcome = outcome
        self.done.set()

    def merge_key(self) -> tuple[Any, ...] | None:
        """Calls with the same key can share one command (None: this call goes alone)."""
        if self.merge is None or self.solo:
            return None
        return (self.method, *(self.params.get(k) for k in self.merge.keys))

    def size(self) -> int:
        """Items this call adds to a merged command."""
        return len(self.params.get(self.merge.items) or ()) if self.merge is not None else 1


@dataclass
class Command:
    """One command of a request: a call, or several merged calls that share it."""

    method: str
    params: Mapping[str, Any]
    members: list[Call]

    def succeeded(self, outcome: CallResult | BaseException) -> bool:
        """Whether a merged command's outcome holds for each member (else they are split)."""
        rule = self.members[0].merge
        return rule is not None and isinstance(outcome, CallResult) and rule.succeeded(outcome.result)


def build_commands(calls: list[Call], merge_max: int = 50) -> list[Command]:
    """Group mergeable calls (same method and key, in arrival order) into commands of at most `merge_max` items
    (a group that is full starts another); others stay one command each. `merge_max` 1: no merging."""
    if merge_max <= 1:
        return [Command(c.method, c.params, [c]) for c in calls]
    commands: list[Command] = []
    open_groups: dict[tuple[Any, ...], tuple[Command, int]] = {}
    for call in calls:
        key = call.merge_key()
        group = open_groups.get(key) if key is not None else None
        if group is not None and group[1] + call.size() <= merge_max:
            group[0].members.append(call)
            open_groups[key] = (group[0], group[1] + call.size())  # type: ignore[index]
            continue
        command = Command(call.method, call.params, [call])
        commands.append(command)
        if key is not None:
            open_groups[key] = (command, call.size())
    for command in commands:
        rule = command.members[0].merge
        if len(command.members) > 1 and rule is not None:
            items = [item for member in command.members for item in member.params[rule.items]]
            command.params = {**command.members[0].params, rule.items: items}
    return commands
