"""Ordering: the portal ends in the state last reported, whatever retries, redeliveries and packing do.

A job kind declares an `OrderRule` (`tasks.jobs`): the *state keys* its job sets (a message's status, a
sender's handler URL, a dialog's unread mark) and, optionally, a rank. Every job gets a *version* when
it is recorded: `(rank, t, seq)`, compared in that order, where `t` is the source's own event time
(`at`) or the Redis server's time at enqueue, and `seq` a per-portal counter (the producer's order).
With ranks (status-update: queued < sent < delivered/undelivered/failed), a final status outranks any
non-final one whatever their times; within a rank the newer report wins.

Right before a request goes out, one Lua call (`gate`) decides for each call of the batch, per state
key, and records what it lets through:

* a key whose *sent* version is newer than the job's is never sent again by an older job (retries,
  redeliveries and re-packed calls of older jobs are superseded);
* a key whose *latest recorded* version is newer, and whose newer job still has its ledger record, is
  left to that newer job: while a backlog waits, only the newest job per key reaches the portal
  (coalescing);
* otherwise the key's sent version becomes the job's, and the call goes out.

A call whose keys are all superseded ends as `Superseded` (a terminal outcome, not an error); a call
with some keys superseded (a sender update that also sets a field a newer job set) goes out without
those parameters. A newer job that is redelivered may repeat itself (at-least-once); an older one
never goes out after it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.keys import Keys

#: (rank, t, seq). The store's keys live as long as the ledger keeps a job (`ledger_ttl`).
Version = tuple[float, float, int]

_COMPARE = """
local function newer(r1, t1, s1, r2, t2, s2)  -- (r1, t1, s1) > (r2, t2, s2)
  if r1 ~= r2 then return r1 > r2 end
  if t1 ~= t2 then return t1 > t2 end
  return s1 > s2
end
"""

# Stamp jobs of one portal in the producer's order. KEYS[1] the portal's counter, then per job its ledger
# record and its state keys; ARGV: ttl, then per job: job id, rank, at ('' = the server's time), number of
# its state keys. The version ("rank t seq") goes into the record's `ver` field, and is returned per job.
_STAMP = (
    _COMPARE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
local out, k, a = {}, 2, 2
while a <= #ARGV do
  local job, rank, at, n = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local ts = now
  if at ~= '' then ts = tonumber(at) end
  ts = tonumber(string.format('%.6f', ts))  -- as the version text carries it
  local seq = redis.call('INCR', KEYS[1])
  local version = rank .. ' ' .. string.format('%.6f', ts) .. ' ' .. seq
  redis.call('HSET', KEYS[k], 'ver', version)
  k = k + 1
  for i = k, k + n - 1 do
    local cur = redis.call('HMGET', KEYS[i], 'lr', 'lt', 'ls')
    if not cur[1] or newer(rank, ts, seq, tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3])) then
      redis.call('HSET', KEYS[i], 'lr', rank, 'lt', string.format('%.6f', ts), 'ls', seq, 'lj', job)
    end
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  out[#out + 1] = version
  k, a = k + n, a + 4
end
redis.call('EXPIRE', KEYS[1], ttl)
return out
"""
)

# Decide for a batch's calls, in the order given. KEYS: the state keys of every call, in call order.
# ARGV: ttl, the ledger's job key prefix, then per call: job id, rank, t, seq, number of its keys.
# Returns per call a list: for each of its keys, '' (send) or the id of the job that supersedes it.
_GATE = (
    _COMPARE
    + """
local ttl, job_prefix = tonumber(ARGV[1]), ARGV[2]
local out, k, a = {}, 1, 3
while a <= #ARGV do
  local job, r, t, s, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
                          tonumber(ARGV[a + 4])
  local verdicts = {}
  for i = k, k + n - 1 do
    local c = redis.call('HMGET', KEYS[i], 'sr', 'st', 'ss', 'sj', 'lr', 'lt', 'ls', 'lj')
    local by = ''
    if c[1] and newer(tonumber(c[1]), tonumber(c[2]), tonumber(c[3]), r, t, s) then
      by = c[4]
    elseif c[5] and c[8] ~= job and newer(tonumber(c[5]), tonumber(c[6]), tonumber(c[7]), r, t, s)
        and redis.call('EXISTS', job_prefix .. c[8]) == 1 then
      by = c[8]
    end
    verdicts[#verdicts + 1] = by
  end
  local sending = false
  for _, by in ipairs(verdicts) do if by == '' then sending = true end end
  if sending then
    for i = k, k + n - 1 do
      if verdicts[i - k + 1] == '' then
        redis.call('HSET', KEYS[i], 'sr', r, 'st', string.format('%.6f', t), 'ss', s, 'sj', job)
        redis.call('EXPIRE', KEYS[i], ttl)
      end
    end
  end
  out[#out + 1] = verdicts
  k, a = k + n, a + 5
end
return out
"""
)


@dataclass(frozen=True)
class StateKey:
    """One piece of portal state a job sets; `params` are the call's parameters that set it (dropped from
    the call when a newer job has this key)."""

    name: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Order:
    """What the gate needs of one call: its job, version and state keys (JSON-safe: it travels between
    worker processes with the call)."""

    job_id: str
    version: Version
    keys: tuple[StateKey, ...] = field(default=())

    def as_list(self) -> list[Any]:
        return [self.job_id, list(self.version), [[k.name, list(k.params)] for k in self.keys]]

    @classmethod
    def from_list(cls, data: Sequence[Any] | None) -> Order | None:
        if not data:
            return None
        job_id, (rank, t, seq), keys = data
        return cls(str(job_id), (float(rank), float(t), int(seq)), tuple(StateKey(n, tuple(p)) for n, p in keys))


@dataclass(frozen=True)
class OrderRule:
    """A job kind's ordering declaration: the state keys of a call's params, and its rank (0 for all when
    the kind has no ranks, or ranks are turned off)."""

    keys: Callable[[Mapping[str, Any]], tuple[StateKey, ...]]
    rank: Callable[[Mapping[str, Any]], int] = lambda params: 0


def parse_version(text: str | bytes | None) -> Version | None:
    if not text:
        return None
    rank, t, seq = (text.decode() if isinstance(text, bytes) else text).split()
    return float(rank), float(t), int(seq)


def format_version(version: Version) -> str:
    rank, t, seq = version
    return f"{rank:g} {t:.6f} {seq}"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one call: the parameters that still go out, or the job that supersedes it."""

    params: Mapping[str, Any] | None
    superseded_by: str = ""


class Ordering:
    """The ordering store: per-portal counters and per-state-key versions (its keys via `Keys`)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self._ttl = int(ttl)
        self._stamp = client.register_script(_STAMP)
        self._gate = client.register_script(_GATE)

    def stamp(
        self, portal: str, jobs: Sequence[tuple[str, int, float | None, Sequence[StateKey]]], pipe: Any = None
    ) -> Any:
        """Give jobs of one portal their versions, in order: (job id, rank, at or None, state keys), and
        write each into the job's ledger record (`ver`). With a pipeline the script is queued there, in
        the same transaction as the records; without one it runs now and the versions are returned."""
        keys = [self._keys.order_counter(portal)]
        args: list[Any] = [self._ttl]
        for job_id, rank, at, state_keys in jobs:
            keys += [self._keys.job(job_id), *(self._keys.state(portal, k.name) for k in state_keys)]
            args += [job_id, rank, "" if at is None else f"{at:.6f}", len(state_keys)]
        if pipe is not None:
            return self._stamp(keys=keys, args=args, client=pipe)
        return [parse_version(v) for v in self._stamp(keys=keys, args=args)]

    def gate(self, portal: str, calls: Sequence[tuple[Order, Mapping[str, Any]]]) -> list[Verdict]:
        """Decide and record, in one step, which of these calls (with their params) go out."""
        keys: list[str] = []
        args: list[Any] = [self._ttl, self._keys.job("")]
        for order, _params in calls:
            keys += [self._keys.state(portal, k.name) for k in order.keys]
            rank, t, seq = order.version
            args += [order.job_id, f"{rank:g}", f"{t:.6f}", seq, len(order.keys)]
        answers = self._gate(keys=keys, args=args)
        verdicts: list[Verdict] = []
        for (order, params), answer in zip(calls, answers, strict=True):
            by = [b.decode() if isinstance(b, bytes) else str(b) for b in answer]
            if not order.keys or all(b == "" for b in by):
                verdicts.append(Verdict(params))
                continue
            if all(b != "" for b in by):
                verdicts.append(Verdict(None, by[-1]))
                continue
            dropped = {p for key, b in zip(order.keys, by, strict=True) if b for p in key.params}
            verdicts.append(Verdict({k: v for k, v in params.items() if k not in dropped}))
        return verdicts

    def sent(self, portal: str, key: str) -> tuple[Version | None, str]:
        """A state key's last sent version and job (for tests and tools)."""
        sr, st, ss, sj = self._client.hmget(self._keys.state(portal, key), ["sr", "st", "ss", "sj"])
        if sr is None:
            return None, ""
        return (float(sr), float(st), int(ss)), (sj or b"").decode()
