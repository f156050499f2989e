"""What `b24q demo` prints once its jobs have run: their outcomes by kind, each portal's requests as the
emulator saw them, the pace against each portal's limit, and the whole run against the ideal time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tasks.jobs import KINDS
from workers.localdev.localstack import LocalStack
from workers.runtime import Runtime


@dataclass
class Batch:
    """The jobs the demo enqueued, and when."""

    jobs: list[tuple[str, dict[str, Any]]]
    ids: list[str]
    start: float  # monotonic, when enqueueing began
    enqueue_s: float
    ideal: float  # seconds, at the portals' limits

    @property
    def kinds(self) -> dict[str, str]:
        return {job_id: kind for job_id, (kind, _) in zip(self.ids, self.jobs, strict=True)}


def report(stack: LocalStack, rt: Runtime, batch: Batch, elapsed: float, domains: list[str]) -> dict[str, Counter[str]]:
    """The tables at the end, and the closing lines; the outcomes by job kind."""
    outcome = _outcomes(rt, batch.kinds)
    _per_portal(stack, domains)
    _against_limits(stack, rt, domains)
    unfinished = sum(
        sum(c.values()) - c["applied"] - c["superseded"] - c["dead"] - c["parked"] for c in outcome.values()
    )
    ids, ideal = batch.ids, batch.ideal
    print(
        f"\n{len(ids)} jobs finished in {elapsed:.1f}s ({len(ids) / elapsed:.0f} jobs/s), enqueueing included "
        f"({batch.enqueue_s:.1f}s on the same cores); "
        + (
            f"the ideal at the portals' limits was {ideal:.1f}s: {ideal / elapsed:.2f} of it. "
            if ideal >= 1
            else "the portals' bursts hold this whole run, so no ideal time applies. "
        )
        + f"Jobs without an outcome: {unfinished}."
    )
    dead = rt.dead.counts()
    if dead:
        print(f"Dead letters by reason: {dict(dead)}  ->  b24q dead list / b24q dead replay --all")
    sample = ids[0]
    print(f"One job's history: b24q job show {sample}")
    return outcome


def _outcomes(rt: Runtime, kinds: dict[str, str]) -> dict[str, Counter[str]]:
    print("\nOutcomes by job kind:")
    outcome: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    found = rt.ledger.states(kinds)
    for job_id, kind in kinds.items():
        outcome[kind][found[job_id][0] or "?"] += 1
    print(f"  {'kind':<22}{'applied':>8}{'superseded':>11}{'dead':>6}{'parked':>8}{'other':>7}")
    for kind, c in outcome.items():
        if not c:
            continue
        other = sum(c.values()) - c["applied"] - c["superseded"] - c["dead"] - c["parked"]
        print(f"  {kind:<22}{c['applied']:>8}{c['superseded']:>11}{c['dead']:>6}{c['parked']:>8}{other:>7}")
    return outcome


def _per_portal(stack: LocalStack, domains: list[str]) -> None:
    print("\nPer portal (as the emulator saw it):")
    print(f"  {'portal':<22}{'requests':>9}{'jobs/req':>9}{'503s':>6}{'refreshes':>10}{'invalid_grant':>14}")
    for domain in domains:
        c = stack.emulator.state(domain)["counters"]
        per = c["batch_commands"] + (c["accepted"] - c["batches"])
        print(
            f"  {domain:<22}{c['accepted']:>9}{per / max(c['accepted'], 1):>9.1f}{c['refused_503']:>6}"
            f"{c['refreshes']:>10}{c['invalid_grants']:>14}"
        )


def _against_limits(stack: LocalStack, rt: Runtime, domains: list[str]) -> None:
    print("\nAgainst each portal's limit:")
    for domain in domains:
        state = stack.emulator.state(domain)
        key = rt.registry.resolve(domain) or domain
        lim = rt.portals(key).limits(stack.settings)
        print(f"  {domain:<22} {limit_line(sorted(state['accepted_times']), lim.rate, lim.our_burst, lim.burst)}")
    print(
        "  (Steady state: requests per second from the moment a portal's bucket was full, against its rate, given\n"
        "  over 10 s or more; else the requests of the whole run against what the portal's bucket allowed.\n"
        "  The whole-run figure below also counts the start, while the pool takes the first jobs from the queue\n"
        "  and spends the burst on requests as they fill, and the tail, where the last requests carry the last\n"
        "  jobs; its ideal counts superseded jobs too, which are never sent, so a run can beat it.)"
    )


#: the shortest window a steady rate is given for: over a shorter one, the request or two the bucket still had
#: room for when it first looked full weigh more than a tenth of what the rate allows
STEADY_MIN = 10.0


def limit_line(times: list[float], rate: float, burst: int, portal_burst: int) -> str:
    """What the portal's accepted requests (their times, sorted) say against its limit: the steady rate once
    its bucket was full as b24q fills it (`burst`), over a window long enough to say it; else the whole run
    against what the portal's own bucket (`portal_burst`) allowed. (b24q keeps a few requests of the portal's
    burst for a send that arrives late: the portal's bucket, not b24q's, is the limit.)"""
    full = _bucket_full_at(times, rate, burst)
    if full is not None and times[-1] - times[full] >= STEADY_MIN:
        window = times[-1] - times[full]
        steady = (len(times) - 1 - full) / window
        return (
            f"steady state {steady:.2f} requests/s of {rate:g} allowed ({steady / rate:.2f}) over the last "
            f"{window:.1f}s, once its bucket was full"
        )
    allowed = portal_burst + rate * (times[-1] - times[0]) if times else 0
    pace = (
        "here the pool, not the portal, set the pace"
        if full is None
        else f"full only for the last {times[-1] - times[full]:.1f}s, too short to give a steady rate"
    )
    return (
        f"{'never full' if full is None else 'whole run'}: {len(times)} requests of the {allowed:.0f} its bucket "
        f"allowed ({len(times) / max(allowed, 1):.2f}); {pace}"
    )


def _bucket_full_at(times: list[float], rate: float, burst: int) -> int | None:
    """The index of the request after which the portal's leaky bucket (as b24q fills it) was full, replaying
    the accepted requests' times; None if it never was."""
    level, last = 0.0, times[0] if times else 0.0
    for i, t in enumerate(times):
        level = max(0.0, level - rate * (t - last)) + 1
        last = t
        if level >= burst - 1:
            return i
    return None
