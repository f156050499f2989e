"""The records of jobs applied on their first run, packed into shared hashes: ~45-50 Redis bytes a job, not ~300.

Most jobs go straight through (queued, running, applied), and their record is kept for `ledger_ttl_applied`.
A key of its own would cost ~100 bytes before its fields (the 36-character key, its object, its entry in the
key table and in the expiry table), so such a record is moved, when its job is applied, into an entry of a
shared hash ("bucket") kept in Redis's compact encoding (a listpack: up to `hash-max-listpack-entries`, 128 by
default, and values of at most 64 bytes):

* the field is the job id: a UUID (Celery's ids) as its 16 bytes, any other id as it is;
* the value is ~23 bytes of binary, each width chosen per record: created in ms (from the generation's start),
  started and updated as deltas, the kind, portal and worker as 2-byte ids of the generation's table of names,
  the order version if the job has one (the layout is in `lua/packed.lua`, the one codec: the scripts that
  pack, unpack and read it all run in Redis).

Buckets live in *generations* of `ledger_ttl_applied` seconds (the Redis server's clock): a record goes into
the current one, is looked up there and in the one before, and every key of a generation expires at the end
of the next: a record is kept one to two `ledger_ttl_applied`, and dropped with its generation, never entry by
entry (Redis before 7.4 has no per-field expiry).

Inside a generation, *extendible hashing* keeps every bucket small at any volume, with nothing to configure: a
job's bucket is named by the first bits of the SHA-1 of its field; a bucket past `split_at` entries is split
into its two children (one more bit) and its path is added to the generation's split set; a lookup follows the
digest's bits from the root while the path is in that set (a few set look-ups at millions of jobs a day).

A record that would not read back exactly (a field the short path does not know, a time or id out of range)
stays a hash for `ledger_ttl_applied`, as before. Every reader of the ledger goes through `lua/read.lua`; a job
seen again after it was applied (a redelivery, a recovery) gets its hash back first (`pack_restore`).
"""

from __future__ import annotations

from pathlib import Path

import redis

from workers.keys import Keys

_LUA = Path(__file__).parent / "lua"
_PRELUDE = (_LUA / "packed.lua").read_text()
#: A bucket splits past this many entries (its children then hold about half each): under Redis's default
#: `hash-max-listpack-entries` (128) with room for the entries a split does not halve exactly.
SPLIT_AT = 120


def script(client: redis.Redis, name: str) -> redis.commands.core.Script:
    """A ledger script (`lua/NAME.lua`) with the packed records' functions before it."""
    return client.register_script(_PRELUDE + "\n" + (_LUA / f"{name}.lua").read_text())


class Packing:
    """Where packed records live and how buckets grow: the three arguments every script that includes
    `packed.lua` takes first.

    Parameters:
        window: a generation's length in seconds (`ledger_ttl_applied`); a record is kept one to two of them.
        split_at: entries a bucket holds before it splits (tests make it small).
    """

    def __init__(self, client: redis.Redis, keys: Keys, window: float, split_at: int = SPLIT_AT) -> None:
        self._client = client
        self._keys = keys
        self.args: list[str | int] = [keys.ledger_packed(), max(1, int(window)), max(1, split_at)]

    def count(self) -> int:
        """Packed records held now, in every live generation (a SCAN: for tests and tools)."""
        found = self._client.scan_iter(self._keys.ledger_bucket_pattern(), count=1000)
        return sum(int(self._client.hlen(key)) for key in found)

    def buckets(self) -> list[bytes]:
        """Every key of the packed records, buckets, split sets and tables of names (for memory figures)."""
        return list(self._client.scan_iter(self._keys.ledger_packed() + ":*", count=1000))
