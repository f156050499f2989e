"""Ordering: the portal ends in the state last reported, whatever retries, redeliveries and packing do.

A job kind declares an `OrderRule` (`tasks.jobs`): the *state keys* its job sets (a message's status, a
sender's handler URL, a dialog's unread mark) and, optionally, a rank. Every job gets a *version* when
it is recorded: `(rank, t, seq)`, compared in that order, where `t` is the source's own event time
(`at`) or the Redis server's time at enqueue, and `seq` a per-portal counter (the producer's order).
With ranks (status-update: queued < sent < delivered/undelivered/failed), a final status outranks any
non-final one whatever their times; within a rank the newer report wins.

Right before a request goes out, one Lua call (`gate`) decides for each call of the batch, per state
key, and records what it lets through (a quiet portal's lone round asks it in the round trip that books
its slot: a call whose slot then turns out later, or is withdrawn, leaves its own version recorded as sent,
which it passes again when it goes and which only an older job's call is superseded by):

* a key whose *sent* version is newer than the job's is never sent again by an older job (retries,
  redeliveries and re-packed calls of older jobs are superseded);
* a key whose *latest recorded* version is newer, and whose newer job still has its ledger record, is
  left to that newer job: while a backlog waits, only the newest job per key reaches the portal
  (coalescing). (A newer job that was applied has no record key of its own: the ledger packs it. It
  sent, so the rule above decides first: tests/test_ledger_packed.py);
* otherwise the key's sent version becomes the job's, and the call goes out.

A call whose keys are all superseded ends as `Superseded` (a terminal outcome, not an error); a call
with some keys superseded (a sender update that also sets a field a newer job set) goes out without
those parameters. A newer job that is redelivered may repeat itself (at-least-once); an older one
never goes out after it.

A state key's entry is kept at least `Settings.ordering_retention` after it was last written (stamped or
sent), and less than twice that: every job that can still be gated against it is younger than that (see
there), so it is never gone while it decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.keys import Keys

#: (rank, t, seq).
Version = tuple[float, float, int]

# What every script shares: comparing versions, and one state key's entry in its portal's bucket.
#
# Memory is what this layout is for: a message reported on keeps one field in a hash of its portal
# ("bucket"), not a key of its own (a key costs ~70 bytes before its value, and one more entry in the
# expiry table). Its value is packed in 30 bytes when sent and latest are one job with a UUID id (under 32,
# Redis's smallest string header: a 32-byte allocation where 31 bytes take 48): a head byte (1: has a
# latest version, 2: has a sent version of another job or version, 4: the sent version is the latest's,
# 8: the latest's job id is a UUID, 16: the sent one's), then each version as struct '>BI7I5' (rank,
# t in microseconds, seq: 13 bytes) and its job id (a canonical lower-case UUID as 16 bytes, any other id
# as a 2-byte length and the id). Times are compared as integer microseconds, which orders them exactly
# as the version text's six decimals do.
#
# A state key's field is not its name but 14 bytes of its BLAKE2b digest (`_field`): a name as long as
# "status:smsgw:" and a gateway's UUID would take a 64-byte allocation, the digest takes 16 (two names
# share a field with a chance of n² / 2¹¹³: none that matters).
#
# Buckets rotate instead of expiring entry by entry (Redis before 7.4 has no per-field TTL): an entry is
# written into the bucket of the current generation (server time // window) and read from it or the one
# before; a bucket expires whole at the end of the generation after its own. So an entry is kept at least
# one window after it was last written, and less than two.
_ENTRY = """
local function newer(r1, t1, s1, r2, t2, s2)  -- (r1, t1, s1) > (r2, t2, s2)
  if r1 ~= r2 then return r1 > r2 end
  if t1 ~= t2 then return t1 > t2 end
  return s1 > s2
end

local function micros(seconds)  -- a version's t (six decimals) as an exact integer
  return math.floor(tonumber(seconds) * 1000000 + 0.5)
end

local UUID = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local function pack_id(id)  -- the packed id, and whether it is a UUID's 16 bytes
  if #id == 36 and id == string.lower(id) and string.find(id, UUID) then
    local hex = string.gsub(id, '%-', '')
    return (string.gsub(hex, '%x%x', function(h) return string.char(tonumber(h, 16)) end)), true
  end
  return struct.pack('>H', #id) .. id, false
end
local function unpack_id(raw, pos, uuid)  -- the id at pos, and the position after it
  if uuid then
    local hex = string.gsub(string.sub(raw, pos, pos + 15), '.',
                            function(c) return string.format('%02x', string.byte(c)) end)
    return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' .. string.sub(hex, 13, 16) .. '-'
           .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32), pos + 16
  end
  local n = struct.unpack('>H', raw, pos)
  return string.sub(raw, pos + 2, pos + 1 + n), pos + 2 + n
end

local function bit(head, b) return math.floor(head / b) % 2 == 1 end

local function decode(raw)  -- {lr, lt, ls, lj, sr, st, ss, sj}, t in microseconds, absent versions as nil
  local e = {}
  if not raw then return e end
  local head, pos = string.byte(raw, 1), 2
  if bit(head, 1) then
    e.lr, e.lt, e.ls, pos = struct.unpack('>BI7I5', raw, pos)
    e.lj, pos = unpack_id(raw, pos, bit(head, 8))
  end
  if bit(head, 4) then
    e.sr, e.st, e.ss, e.sj = e.lr, e.lt, e.ls, e.lj
  elseif bit(head, 2) then
    e.sr, e.st, e.ss, pos = struct.unpack('>BI7I5', raw, pos)
    e.sj, pos = unpack_id(raw, pos, bit(head, 16))
  end
  return e
end

local function encode(e)
  local head, body = 0, ''
  if e.lr then
    local id, uuid = pack_id(e.lj)
    head, body = 1, struct.pack('>BI7I5', e.lr, e.lt, e.ls) .. id
    if uuid then head = head + 8 end
  end
  if e.sr then
    if e.lr and e.sj == e.lj and e.sr == e.lr and e.st == e.lt and e.ss == e.ls then
      head = head + 4
    else
      local id, uuid = pack_id(e.sj)
      head, body = head + 2, body .. struct.pack('>BI7I5', e.sr, e.st, e.ss) .. id
      if uuid then head = head + 16 end
    end
  end
  return string.char(head) .. body
end

-- the buckets of this portal (KEYS[1] their common prefix: the portal's hash tag keeps them on its slot)
local window = tonumber(ARGV[1])
local generation = math.floor(tonumber(redis.call('TIME')[1]) / window)
local current = KEYS[1] .. ':' .. generation
local previous = KEYS[1] .. ':' .. (generation - 1)
local written = false
local function load(name)
  return decode(redis.call('HGET', current, name) or redis.call('HGET', previous, name))
end
local function store(name, e)
  redis.call('HSET', current, name, encode(e))
  written = true
end
local function close()
  if written then redis.call('EXPIREAT', current, (generation + 2) * window) end
end
"""

# Stamp jobs of one portal in the producer's order. KEYS: the portal's buckets, its counter, then per job
# its ledger record. ARGV: window, then per job: job id, rank, at ('' = the server's time), the number of
# its state keys and their fields. The version ("rank t seq") goes into the record's `ver` field, and is
# returned per job.
_STAMP = (
    _ENTRY
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out, k, a = {}, 3, 2
while a <= #ARGV do
  local job, rank, at, n = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local ts = now
  if at ~= '' then ts = tonumber(at) end
  ts = tonumber(string.format('%.6f', ts))  -- as the version text carries it
  local seq = redis.call('INCR', KEYS[2])
  local version = rank .. ' ' .. string.format('%.6f', ts) .. ' ' .. seq
  redis.call('HSET', KEYS[k], 'ver', version)
  for i = a + 4, a + 3 + n do
    local e = load(ARGV[i])
    if not e.lr or newer(rank, micros(ts), seq, e.lr, e.lt, e.ls) then
      e.lr, e.lt, e.ls, e.lj = rank, micros(ts), seq, job
    end
    store(ARGV[i], e)  -- (also when unchanged: into the current bucket, kept another window)
  end
  out[#out + 1] = version
  k, a = k + 1, a + 4 + n
end
-- the counter outlives every entry it ordered: an entry is written at most a job's life after its
-- stamp (window >= that) and kept less than two windows
redis.call('EXPIRE', KEYS[2], 3 * window)
close()
return out
"""
)

# Decide for a batch's calls, in the order given. KEYS: the portal's buckets. ARGV: window, the ledger's
# job key prefix, then per call: job id, rank, t, seq, the number of its state keys and their fields.
# Returns per call a list: for each of its keys, '' (send) or the id of the job that supersedes it.
_GATE = (
    _ENTRY
    + """
local job_prefix = ARGV[2]
local out, a = {}, 3
while a <= #ARGV do
  local job, r, t, s, n = ARGV[a], tonumber(ARGV[a + 1]), micros(ARGV[a + 2]), tonumber(ARGV[a + 3]),
                          tonumber(ARGV[a + 4])
  local entries, verdicts = {}, {}
  for i = 1, n do
    local e = load(ARGV[a + 4 + i])
    local by = ''
    if e.sr and newer(e.sr, e.st, e.ss, r, t, s) then
      by = e.sj
    elseif e.lr and e.lj ~= job and newer(e.lr, e.lt, e.ls, r, t, s)
        and redis.call('EXISTS', job_prefix .. e.lj) == 1 then
      by = e.lj
    end
    entries[i], verdicts[i] = e, by
  end
  local sending = false
  for _, by in ipairs(verdicts) do if by == '' then sending = true end end
  if sending then
    for i = 1, n do
      if verdicts[i] == '' then
        local e = entries[i]
        e.sr, e.st, e.ss, e.sj = r, t, s, job
        store(ARGV[a + 4 + i], e)
      end
    end
  end
  out[#out + 1] = verdicts
  a = a + 5 + n
end
close()
return out
"""
)

# A state key's sent version and job: {rank, t, seq, job} or {} (for tests and tools). ARGV: window, field.
_SENT = (
    _ENTRY
    + """
local e = load(ARGV[2])
if not e.sr then return {} end
return {tostring(e.sr), string.format('%.6f', e.st / 1000000), tostring(e.ss), e.sj}
"""
)


def _field(name: str) -> bytes:
    """A state key's field in its portal's buckets (see above)."""
    return hashlib.blake2b(name.encode(), digest_size=14).digest()


@dataclass(frozen=True)
class StateKey:
    """One piece of portal state a job sets; `params` are the call's parameters that set it (dropped from
    the call when a newer job has this key)."""

    name: str
    params: tuple[str, ...] = ()


#: A job to stamp: its id, its rank, when its report was made (None: unknown) and the state keys it sets.
Stamped = tuple[str, int, float | None, Sequence[StateKey]]


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
    """A job kind's ordering declaration: the state keys of a call's params, and its rank (0 to 255; 0 for
    all when the kind has no ranks, or ranks are turned off)."""

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
    """The ordering store: per-portal counters, and per-state-key versions in rotating buckets (their keys
    via `Keys`).

    Parameters:
        window: seconds an entry is kept at least after it was last written (less than twice that); see
            `Settings.ordering_retention` for how long that must be.
    """

    def __init__(self, client: redis.Redis, keys: Keys, window: float) -> None:
        self._client = client
        self._keys = keys
        self._window = max(1, int(window))
        self._stamp = client.register_script(_STAMP)
        self._gate = client.register_script(_GATE)
        self._sent = client.register_script(_SENT)

    def stamp(self, portal: str, jobs: Sequence[Stamped]) -> list[Version]:
        """Give jobs of one portal their versions, in order: (job id, rank, at or None, state keys), and
        write each into the job's ledger record (`ver`); the versions, in the same order."""
        keys, args = self._stamp_call(portal, jobs)
        versions = [parse_version(v) for v in self._stamp(keys=keys, args=args)]
        if len(versions) != len(jobs) or None in versions:
            raise RuntimeError(f"the stamp script gave {versions!r} for {len(jobs)} jobs")
        return [v for v in versions if v is not None]

    def queue_stamps(self, pipe: Any, stamps: Mapping[str, Sequence[Stamped]]) -> None:
        """`stamp` for the jobs of several portals, queued in a transaction beside the jobs' records.

        The script's text goes once (EVAL), then its hash (EVALSHA): Redis runs them in order, so the hashes
        find the script even if Redis lost it (a restart). redis-py's registered script would ask SCRIPT
        EXISTS first, a round trip more per enqueue; and an EVALSHA Redis no longer knows would fail alone
        inside MULTI while the records beside it were written."""
        for i, (portal, jobs) in enumerate(stamps.items()):
            keys, args = self._stamp_call(portal, jobs)
            if i == 0:
                pipe.eval(_STAMP, len(keys), *keys, *args)
            else:
                pipe.evalsha(self._stamp.sha, len(keys), *keys, *args)

    def _stamp_call(self, portal: str, jobs: Sequence[Stamped]) -> tuple[list[str], list[Any]]:
        keys = [self._keys.order_states(portal), self._keys.order_counter(portal)]
        args: list[Any] = [self._window]
        for job_id, rank, at, state_keys in jobs:
            if not 0 <= rank <= 255:
                raise ValueError(f"a rank is packed in a byte: 0 to 255, not {rank}")
            keys.append(self._keys.job(job_id))
            at_text = "" if at is None else f"{at:.6f}"
            args += [job_id, rank, at_text, len(state_keys), *(_field(k.name) for k in state_keys)]
        return keys, args

    def gate(self, portal: str, calls: Sequence[tuple[Order, Mapping[str, Any]]]) -> list[Verdict]:
        """Decide and record, in one step, which of these calls (with their params) go out."""
        return self.verdicts_from(
            calls, self._gate(keys=[self._keys.order_states(portal)], args=self._gate_args(calls))
        )

    def queue_gate(self, pipe: Any, portal: str, calls: Sequence[tuple[Order, Mapping[str, Any]]]) -> None:
        """Queue `gate` in a pipeline; its reply goes to `verdicts_from`, a NoScriptError (a Redis restarted
        since) to `gate`."""
        pipe.evalsha(self._gate.sha, 1, self._keys.order_states(portal), *self._gate_args(calls))

    def _gate_args(self, calls: Sequence[tuple[Order, Mapping[str, Any]]]) -> list[Any]:
        args: list[Any] = [self._window, self._keys.job("")]
        for order, _params in calls:
            rank, t, seq = order.version
            args += [order.job_id, f"{rank:g}", f"{t:.6f}", seq, len(order.keys), *(_field(k.name) for k in order.keys)]
        return args

    @staticmethod
    def verdicts_from(calls: Sequence[tuple[Order, Mapping[str, Any]]], answers: Any) -> list[Verdict]:
        """What `gate`'s script answered, as a verdict per call."""
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
        found = self._sent(keys=[self._keys.order_states(portal)], args=[self._window, _field(key)])
        if not found:
            return None, ""
        rank, t, seq, job = (v.decode() for v in found)
        return (float(rank), float(t), int(seq)), job
