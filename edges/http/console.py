"""The operator's console at /console: for the people who answer "why didn't my SMS status update?".

Server-rendered pages (`edges.http.pages`: Jinja2, `templates/`; one stylesheet and a few lines of script in
`static/`, nothing from a CDN), for a person holding an admin-scoped API key (`edges.http.apikeys`, `*admin`):
a sign-in form sets a signed session cookie (`edges.http.sessions`), and every action is a POST carrying the
session's CSRF token. The pages read the stores (registry, ledger, dead letters, parking, `workers.observe.status`) and
act through the producer and the lifecycle, as the CLI does; each page reads a bounded amount (a page of
portals, a page of letters), so thousands of portals and dead letters keep it fast.

    GET  /console/portals?q=&page=        portals: state, plan and limits, token expiry, backlog, parked, dead
    GET  /console/portals/{key}           one portal; POST …/resume, …/providers, …/replay
    GET  /console/dead?reason=&portal=    dead letters by reason; POST /console/dead/replay|purge (ids or filter)
    GET  /console/jobs?id=                a job as `b24q job show` prints it
    GET  /console/live.json               counts for the live panel (refreshed by static/console.js): jobs applied,
                                          superseded, dead, 503s (QUERY_LIMIT_EXCEEDED) so far
"""

from __future__ import annotations

import math
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edges import jobreport
from edges.http import apikeys, sessions
from edges.http.body import BodyTooLarge, read_body
from edges.http.pages import ConsoleRoute, Refused, refusal, render
from edges.http.runtime import RuntimeDep
from edges.http.sessions import Session
from edges.lifecycle import Lifecycle
from tasks.producer import reactivate, replay
from workers.errors import B24QError
from workers.observe.status import snapshot
from workers.redaction import redact, summarise
from workers.runtime import Runtime

#: Rows on a page of portals or dead letters.
PAGE = 50
#: Largest form the console reads (a page's worth of letter ids).
MAX_FORM = 64 * 1024
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}


def _pages(total: int, page: int) -> dict[str, int]:
    last = max(1, math.ceil(total / PAGE))
    return {"page": min(max(1, page), last), "pages": last, "total": total}


def _int(value: str, default: int = 1) -> int:
    return int(value) if value.isdigit() else default


#: The /console routes.
router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def _secret(rt: Runtime) -> bytes:
    return rt.settings.client_secret.get_secret_value().encode()


def _current(request: Request, rt: Runtime) -> Session | None:
    cookie = request.cookies.get(sessions.COOKIE, "")
    return sessions.read(cookie, apikeys.parse(rt.settings.api_keys), _secret(rt), time.time()) if cookie else None


async def _form(request: Request) -> dict[str, list[str]]:
    try:
        body = await read_body(request, MAX_FORM)
    except BodyTooLarge:
        return {}
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


async def _act(request: Request, rt: Runtime) -> dict[str, list[str]]:
    """The form of a POST from a signed-in operator with the session's CSRF token; else (`Refused`) the
    refusal to answer."""
    session = _current(request, rt)
    if session is None:
        raise Refused(refusal(401, "Sign in with an admin API key first."))
    fields = await _form(request)
    if not sessions.csrf_ok(session, (fields.get("csrf") or [""])[0]):
        raise Refused(refusal(403, "The form's CSRF token does not match this session: reload the page and retry."))
    return fields


def _done(to: str, message: str) -> RedirectResponse:
    sep = "&" if "?" in to else "?"
    return RedirectResponse(f"{to}{sep}{urlencode({'done': message})}", status_code=303)


# --- sign-in -----------------------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/console/portals", status_code=303)


@router.get("/login")
def login_form() -> HTMLResponse:
    return render("login.html", session=None, error="")


@router.post("/login")
async def login(request: Request, rt: RuntimeDep) -> Response:
    presented = (await _form(request)).get("key", [""])[0].strip()
    key = apikeys.identify(apikeys.parse(rt.settings.api_keys), presented) if presented else None
    if key is None:
        return render("login.html", 401, session=None, error="This is not a valid API key.")
    if not key.admin:
        return render("login.html", 403, session=None, error="This API key is not an admin key (scope *admin).")
    cookie, _ = sessions.issue(key, _secret(rt), time.time())
    answer = RedirectResponse("/console/portals", status_code=303)
    answer.set_cookie(
        sessions.COOKIE,
        cookie,
        max_age=sessions.LIFETIME,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return answer


@router.post("/logout")
async def logout(request: Request, rt: RuntimeDep) -> Response:
    await _act(request, rt)
    answer = RedirectResponse("/console/login", status_code=303)
    answer.delete_cookie(sessions.COOKIE, path="/console")
    return answer


# --- pages ---------------------------------------------------------------------------------------------


def _signed_in(request: Request, rt: Runtime) -> Session:
    """The operator's session; else (`Refused`) to the sign-in form."""
    session = _current(request, rt)
    if session is None:
        raise Refused(RedirectResponse("/console/login", status_code=303))
    return session


def _portal_rows(rt: Runtime, names: list[str], dead: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The rows of these portals; `dead`: their dead letters' counts, when the caller has them already."""
    if not names:
        return []
    rows = {row["key"]: row for row in snapshot(rt, names, dead_letters=False)["portals"]}
    dead = rt.dead.counts_by_portal(names) if dead is None else dead
    out = []
    for name in names:
        portal = rt.registry.get(name)
        if portal is None or name not in rows:
            continue
        out.append(
            {
                **rows[name],
                "domain": portal.domain,
                "member_id": portal.member_id,
                "plan": portal.plan,
                "providers": len(portal.provider_list(rt.settings)) if portal.kind == "oauth" else 0,
                "providers_pending": portal.providers_pending.split(),
                "dead": dead.get(name, 0),
            }
        )
    return out


@router.get("/portals")
def portals(request: Request, rt: RuntimeDep, q: str = "", page: str = "1", done: str = "") -> Response:
    session = _signed_in(request, rt)
    names = rt.registry.keys()
    if q:
        exact = rt.registry.resolve(q.strip())  # a domain or member_id names its portal through an alias
        names = [n for n in names if q.strip().lower() in n.lower() and n != exact]
        names = ([exact] if exact else []) + names
    at = _pages(len(names), _int(page))
    shown = names[(at["page"] - 1) * PAGE : at["page"] * PAGE]
    rows = _portal_rows(rt, shown)
    return render("portals.html", session=session, rows=rows, q=q, now=time.time(), done=done, **at)


@router.get("/portals/{key}")
def portal(request: Request, rt: RuntimeDep, key: str, done: str = "") -> Response:
    session = _signed_in(request, rt)
    found = rt.registry.get(key)
    if found is None:
        return render("error.html", 404, session=session, message=f"No portal {key!r}.")
    letters = rt.dead.page(portal=key, limit=PAGE)
    rows = _portal_rows(rt, [key], {key: letters.total})
    parked = rt.parking.parked(key)[:PAGE]
    parked_states = rt.ledger.states([p["id"] for p in parked], "state", "updated")
    return render(
        "portal.html",
        session=session,
        portal=found.public(),
        row=rows[0] if rows else None,
        parked=[{**p, "kwargs": summarise(p["kwargs"]), "state": parked_states[p["id"]]} for p in parked],
        parked_total=rt.parking.count(key),
        recent=[{**job, "last_error": redact(job.get("last_error", ""))} for job in rt.ledger.recent(key)],
        letters=[_letter(letter) for letter in letters.letters],
        dead_total=letters.total,
        providers=[summarise(p) for p in found.provider_list(rt.settings)] if found.kind == "oauth" else [],
        now=time.time(),
        done=done,
    )


@router.post("/portals/{key}/resume")
async def resume(request: Request, rt: RuntimeDep, key: str) -> Response:
    await _act(request, rt)
    count = await run_in_threadpool(reactivate, key, rt)
    return _done(f"/console/portals/{key}", f"{count} parked job(s) resumed")


@router.post("/portals/{key}/providers")
async def providers(request: Request, rt: RuntimeDep, key: str) -> Response:
    await _act(request, rt)
    found = rt.registry.get(key)
    if found is None:
        return refusal(404, f"No portal {key!r}.")
    try:
        count = await run_in_threadpool(Lifecycle(rt).register_providers, found)
    except B24QError as exc:
        return _done(f"/console/portals/{key}", f"providers not registered: {exc}")
    return _done(f"/console/portals/{key}", f"{count} provider(s) enqueued for messageservice.sender.add")


@router.post("/portals/{key}/replay")
async def replay_portal(request: Request, rt: RuntimeDep, key: str) -> Response:
    await _act(request, rt)
    replayed, refused = await run_in_threadpool(lambda: replay(portal=key, rt=rt))
    return _done(f"/console/portals/{key}", f"{len(replayed)} dead letter(s) replayed, {len(refused)} refused")


@router.get("/dead")
def dead(
    request: Request, rt: RuntimeDep, reason: str = "", portal: str = "", page: str = "1", done: str = ""
) -> Response:
    session = _signed_in(request, rt)
    number = _int(page)
    found = rt.dead.page(portal or None, reason or None, (max(1, number) - 1) * PAGE, PAGE)
    at = _pages(found.total, number)
    return render(
        "dead.html",
        session=session,
        letters=[_letter(letter) for letter in found.letters],
        by_reason=list(found.by_reason.items()),
        reason=reason,
        portal=portal,
        done=done,
        **at,
    )


def _chosen(fields: dict[str, list[str]]) -> tuple[list[str] | None, str, str]:
    """The letters a dead-letter form names: its ids, or (with `all`) every letter of its filter."""
    reason, portal = (fields.get("reason") or [""])[0], (fields.get("portal") or [""])[0]
    if (fields.get("all") or [""])[0]:
        return None, reason, portal
    return [i for i in fields.get("id", []) if i], reason, portal


def _back(reason: str, portal: str) -> str:
    query = urlencode({k: v for k, v in (("reason", reason), ("portal", portal)) if v})
    return "/console/dead" + (f"?{query}" if query else "")


@router.post("/dead/replay")
async def dead_replay(request: Request, rt: RuntimeDep) -> Response:
    fields = await _act(request, rt)
    ids, reason, portal = _chosen(fields)
    replayed, refused = await run_in_threadpool(lambda: replay(ids, portal=portal or None, code=reason or None, rt=rt))
    return _done(_back(reason, portal), f"{len(replayed)} replayed, {len(refused)} refused")


@router.post("/dead/purge")
async def dead_purge(request: Request, rt: RuntimeDep) -> Response:
    fields = await _act(request, rt)
    ids, reason, portal = _chosen(fields)

    def purge() -> int:
        found = ids if ids is not None else [d.id for d in rt.dead.iter(portal or None, reason or None)]
        return sum(rt.dead.remove(i) for i in found)

    return _done(_back(reason, portal), f"{await run_in_threadpool(purge)} purged")


@router.get("/jobs")
def job(request: Request, rt: RuntimeDep, id: str = "") -> Response:
    session = _signed_in(request, rt)
    report = jobreport.text(rt, id.strip()) if id.strip() else None
    # a payload or an error text may carry a secret: masked as the logs mask it
    return render("job.html", session=session, id=id, report=redact(report) if report is not None else None)


@router.get("/live.json")
def live(request: Request, rt: RuntimeDep) -> Response:
    if _current(request, rt) is None:
        return JSONResponse({"detail": "sign in first"}, status_code=401)
    counts = rt.ledger.outcomes(rt.registry.keys())
    return JSONResponse(
        {
            "t": time.time(),
            "applied": counts.get("applied", 0),
            "superseded": counts.get("superseded", 0),
            "dead": counts.get("dead", 0),
            "parked": counts.get("parked", 0),
            "refused_503": sum(rt.limiter.refusals().values()),
            "dead_letters": rt.dead.count(),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in _STATIC:
        return refusal(404, "No such file.")
    body = resources.files("edges.http").joinpath("static", name).read_bytes()
    return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})


def _letter(letter: Any) -> dict[str, Any]:
    """A dead letter as a page shows it: its payload summarised with secrets masked, its description redacted."""
    return {
        **vars(letter),  # shallow: the payload is summarised below, no need for asdict's deep copy
        "payload": summarise(letter.payload),
        "description": redact(letter.description),
    }
