"""`make mutants`: each guarantee's test must fail when the mechanism behind it is taken out.

For every mechanism the README promises, a copy of the committed tree gets one small edit that disables
it (the mutant), and the test that guards the guarantee runs against that copy. A mutant is *killed*
when the test fails, as it must; one that *survives* means the test would pass with the mechanism gone.
The table it prints goes into docs/reliability.md. Not part of `make test`: each mutant starts its own
stack, about 10 minutes in all on 2 cores.

    python -m tests.mutants            # all
    python -m tests.mutants limiter    # some, by name
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    guarantee: str
    path: str
    old: str
    new: str
    test: str


MUTANTS = [
    Mutant(
        "limiter",
        "never over a portal's limit, across the pool (GCRA in Redis)",
        "workers/delivery/lua/gcra.lua",
        "local allow_at = tat - (burst - 1) * interval",
        "local allow_at = now  -- mutant: every slot at once",
        "tests/integration/test_limits_tokens_retries.py::test_four_workers_saturating_a_portal_stay_under_its_limit",
    ),
    Mutant(
        "refresh-lock",
        "one token refresh for the whole pool",
        "workers/portals/tokens.py",
        "if self._client.set(lock_key, owner, nx=True, px=int(self._lock_ttl * 1000)):",
        "if True:  # mutant: every thread refreshes",
        "tests/test_tokens.py::test_sixteen_concurrent_refreshes_make_one_oauth_call",
    ),
    Mutant(
        "refresh-lock-ttl",
        "a refresh lock expires by itself (a holder that dies does not block its portal)",
        "workers/portals/tokens.py",
        "if self._client.set(lock_key, owner, nx=True, px=int(self._lock_ttl * 1000)):",
        "if self._client.set(lock_key, owner, nx=True):  # mutant: a lock for ever",
        "tests/faults/test_oauth_faults.py::test_oauth_down_during_refresh_jobs_wait_and_resume[redis-503]",
    ),
    Mutant(
        "reconciler",
        "a message the broker lost is published again",
        "workers/broker/reconcile.py",
        "    candidates = rt.ledger.stale_open(cutoff)",
        "    candidates: list[str] = []  # mutant",
        "tests/faults/test_worker_kill.py::test_a_message_taken_by_a_dying_worker_is_published_again",
    ),
    Mutant(
        "packed-redelivery",
        "a job redelivered after it was applied (its record packed) is not taken for a new job",
        "workers/records/lua/started.lua",
        "if redis.call('EXISTS', KEYS[1]) == 0 then pack_restore(KEYS[1], id, ARGV[10]) end",
        "-- mutant: a packed record is not looked for",
        "tests/test_ledger_packed.py::test_a_redelivered_applied_job_is_recognised",
    ),
    Mutant(
        "dead-worker-recovery",
        "a killed worker's jobs come back in seconds",
        "workers/broker/recovery.py",
        "        seconds, micros = self._client.time()",
        "        return []  # mutant\n        seconds, micros = self._client.time()",
        "tests/faults/test_dead_workers.py::test_a_killed_workers_jobs_are_applied_within_seconds[redis-8]",
    ),
    Mutant(
        "graceful-stop",
        "a SIGTERM'd worker finishes its running jobs and hands the rest back to the queue: none lost, none redelivered",
        "workers/broker/consumer.py",
        "        if isinstance(value, list) and len(value) == 3 and _envelope_ok(value[0]):",
        "        if False:  # mutant: an unacked entry kombu hands back is taken for garbage",
        "tests/faults/test_graceful_stop.py::test_sigterm_under_load_finishes_or_requeues_every_job[redis]",
    ),
    Mutant(
        "stop-drain",
        "a stopping worker answers the other workers' calls it is sending (no SENDER_LOST, no second apply)",
        "workers/delivery/lane.py",
        "            return self._cond.wait_for(lambda: not self._busy, timeout=timeout)",
        "            return True  # mutant: exit with the request on the wire",
        "tests/test_callpool.py::test_a_stopping_worker_answers_the_other_workers_calls_it_is_sending",
    ),
    Mutant(
        "ordering-gate",
        "the portal ends in the state last reported",
        "workers/delivery/ordering.py",
        "            by = [b.decode() if isinstance(b, bytes) else str(b) for b in answer]",
        "            by = ['' for b in answer]  # mutant: everything goes",
        "tests/test_ordering.py::test_the_newest_job_wins_under_any_interleaving",
    ),
    Mutant(
        "ordering-gate-e2e",
        "the portal ends in the state last reported (real workers, faults, kills)",
        "workers/delivery/ordering.py",
        "            by = [b.decode() if isinstance(b, bytes) else str(b) for b in answer]",
        "            by = ['' for b in answer]  # mutant: everything goes",
        "tests/faults/test_ordering_faults.py::test_every_message_ends_in_its_last_reported_status[redis]",
    ),
    Mutant(
        "sender-heartbeat",
        "a job whose call another worker was sending is retried when that worker dies",
        "workers/delivery/callpool.py",
        "        alive = bool(self._redis.exists(self._keys.alive(worker)))",
        "        alive = True  # mutant",
        "tests/test_callpool.py::test_owner_gives_up_when_a_live_senders_heartbeat_expires",
    ),
    Mutant(
        "redaction",
        "no secret in logs",
        "workers/redaction.py",
        "    text = _SECRET_PARAM.sub(",
        "    return text  # mutant\n    text = _SECRET_PARAM.sub(",
        "tests/test_redaction.py",
    ),
    Mutant(
        "redaction-e2e",
        "no secret in logs (a full run at DEBUG, httpx's request lines on)",
        "workers/redaction.py",
        "    text = _SECRET_PARAM.sub(",
        "    return text  # mutant\n    text = _SECRET_PARAM.sub(",
        "tests/integration/test_secrets.py::test_no_secret_leaks_anywhere_in_a_full_run",
    ),
    Mutant(
        "redaction-access-line",
        "uvicorn's access line of a URL carrying a secret is written, masked, without a traceback",
        "workers/redaction.py",
        "    args = record.args\n",
        "    record.msg, record.args = redact(message), None  # mutant: the arguments dropped\n    return\n",
        "tests/test_redaction.py::test_uvicorns_own_access_formatter_reads_a_masked_line",
    ),
    Mutant(
        "application-token",
        "an event is acted on only with the portal's application_token",
        "edges/lifecycle/events.py",
        "    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())",
        "    return True  # mutant",
        "tests/integration/test_application.py::test_forged_events_are_refused_and_change_nothing[redis]",
    ),
    Mutant(
        "verify-budget",
        "a forged event costs a portal its verification budget at most (issue 20)",
        "workers/delivery/verification.py",
        "            if self._limits.rate > 0:",
        "            if False:  # mutant: no budget",
        "tests/security/test_events.py::test_forged_updates_cost_the_portal_its_budget_at_most",
    ),
    Mutant(
        "verify-budget-flood",
        "a flood of forged events costs the portals and the producers nothing (real workers, 40 clients)",
        "workers/delivery/verification.py",
        "            if self._limits.rate > 0:",
        "            if False:  # mutant: no budget",
        "tests/faults/test_forged_events.py",
    ),
    Mutant(
        "providers-hold",
        "status jobs wait while an app update's deleted SMS providers are added again",
        "tasks/jobs.py",
        "    order=STATUS_ORDER,\n    waits_for_providers=True,",
        "    order=STATUS_ORDER,\n    waits_for_providers=False,",
        "tests/integration/test_application.py::test_an_update_brings_the_providers_back_before_status_jobs_go[redis]",
    ),
    Mutant(
        "redirect-hosts",
        "tokens never follow a redirect off B24Q_PORTAL_HOSTS",
        "workers/portals/registry.py",
        "        if not self.host_allowed(new_endpoint, old_endpoint):\n            return False",
        "        pass  # mutant",
        "tests/test_portal_lifecycle.py::test_a_move_is_stored_once_and_never_off_the_allowed_hosts",
    ),
    Mutant(
        "demo-aliases",
        "the README's examples run as written against `b24q demo --keep` (its portals answer to acme, globex)",
        "edges/demo.py",
        'stack_runtime().registry.set_aliases(installed["key"], ALIASES[domain])',
        "pass  # mutant: the portals answer to their member_id and domain only",
        "tests/integration/test_readme.py::test_every_readme_block_runs_against_the_demo",
    ),
    Mutant(
        "log-format-json",
        "B24Q_LOG_FORMAT=json: one JSON object per log line, from serve and the workers",
        "workers/observe/logs.py",
        'return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT)',
        "return logging.Formatter(TEXT)  # mutant: text whatever the setting",
        "tests/integration/test_log_lines.py",
    ),
    Mutant(
        "console-replay",
        "the console's Replay button replays the dead letter (it is applied)",
        "edges/http/console.py",
        "    replayed, refused = await run_in_threadpool(lambda: replay(ids, portal=portal or None, code=reason or None, rt=rt))",
        "    replayed: list[str] = []  # mutant: the button does nothing\n    refused: list[str] = []",
        "tests/browser/test_console_browser.py::test_an_operator_replays_one_dead_letter_and_purges_another",
    ),
]


def run(mutant: Mutant) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"b24q-mutant-{mutant.name}-") as tmp:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        target = Path(tmp) / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return f"MUTATION NOT APPLIED ({mutant.old!r} found {text.count(mutant.old)} times)", 0.0
        target.write_text(text.replace(mutant.old, mutant.new))
        env = {**os.environ, "PYTHONPATH": tmp, "B24Q_FAULT_FIGURES": str(Path(tmp) / "figures.json")}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "addopts=", mutant.test],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        took = time.monotonic() - started
        return ("killed" if done.returncode != 0 else "SURVIVED"), took


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    rows = []
    for mutant in chosen:
        print(f"mutant {mutant.name}: {mutant.path} ...", file=sys.stderr, flush=True)
        verdict, took = run(mutant)
        rows.append((mutant, verdict, took))
        print(f"  {verdict} in {took:.0f}s", file=sys.stderr, flush=True)
    print("| guarantee | mutant (what is taken out) | guarding test | result |")
    print("|---|---|---|---|")
    for mutant, verdict, took in rows:
        print(f"| {mutant.guarantee} | `{mutant.path}`: {mutant.name} | `{mutant.test}` | {verdict} ({took:.0f} s) |")
    return 0 if all(verdict == "killed" for _, verdict, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
