"""Secret masking in free text (log records): every form a secret takes in what b24q logs."""

from __future__ import annotations

import asyncio
import io
import logging

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from edges.http.app import create_app
from workers.redaction import MASK, RedactSecrets, _substituted, install_redaction, redact, redis_url, webhook_url
from workers.runtime import Runtime

SECRET = "s3cr3t-VALUE-42"


@pytest.mark.parametrize(
    "text",
    [
        f"GET https://oauth.bitrix.info/oauth/token/?grant_type=refresh_token&client_secret={SECRET}&x=1",
        f"refresh_token={SECRET}",
        f"refresh_token%3D{SECRET}",
        f"POST https://acme.bitrix24.com/rest/1/{SECRET}/im.dialog.unread.json",
        f"redis://user:{SECRET}@redis.internal:6379/0",
        f'{{"access_token": "{SECRET}", "expires": 3600}}',
        f"{{'refresh_token': '{SECRET}'}}",
        f'auth block: {{"AUTH_ID":"{SECRET}","REFRESH_ID":"{SECRET}"}}',
        f'{{"application_token": "{SECRET}"}}',
        f'{{"client_secret" : "{SECRET}"}}',
        f'{{"auth": "{SECRET}", "to": "chat1"}}',  # a REST call's JSON body
        f'{{\\"access_token\\": \\"{SECRET}\\"}}',  # JSON inside a JSON string (a body kept as text)
        f"auth[access_token]={SECRET}&auth[domain]=acme.bitrix24.com",  # an event POST, PHP-bracket form
        f"auth%5Brefresh_token%5D={SECRET}",
        f"AUTH_ID={SECRET}&REFRESH_ID={SECRET}&member_id=abc",  # the installer page's POST
    ],
)
def test_every_form_of_a_secret_is_masked(text: str) -> None:
    clean = redact(text)
    assert SECRET not in clean and MASK in clean, clean


def test_what_is_not_secret_stays_readable() -> None:
    text = '{"code": "smsgw", "message_id": "a1", "status": "delivered"} portal acme.bitrix24.com'
    assert redact(text) == text


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "answer %s", (f'{{"access_token": "{SECRET}"}}',), None)
    try:
        raise RuntimeError(f"refresh failed for refresh_token={SECRET}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactSecrets().filter(record)
    assert SECRET not in record.getMessage() and SECRET not in (record.exc_text or "")


def test_a_third_party_loggers_lines_are_masked_by_the_handler_they_reach() -> None:
    """The filter sits on handlers (the root logger's in a worker), so it masks what any logger propagates to
    them: httpx's request line (the URL is an argument) and a traceback's text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    top = logging.getLogger("b24q-redaction-test")
    top.addHandler(handler)
    try:
        install_redaction(top)
        third_party = logging.getLogger("b24q-redaction-test.httpx")
        third_party.setLevel(logging.INFO)
        url = httpx.URL(f"https://oauth.bitrix.info/oauth/token/?grant_type=refresh_token&client_secret={SECRET}")
        third_party.info('HTTP Request: %s %s "%s %d %s"', "GET", url, "HTTP/1.1", 200, "OK")
        try:
            raise RuntimeError(f'answer: {{"refresh_token": "{SECRET}"}}')
        except RuntimeError:
            third_party.exception("refresh failed")
    finally:
        top.removeHandler(handler)
    assert SECRET not in stream.getvalue()
    assert f"client_secret={MASK}" in stream.getvalue() and f'"refresh_token": "{MASK}"' in stream.getvalue()


def test_urls_for_people() -> None:
    assert redis_url(f"rediss://:{SECRET}@redis.example:6380/0") == f"rediss://:{MASK}@redis.example:6380/0"
    assert SECRET not in redis_url(f"sentinel://:{SECRET}@a:26379;sentinel://:{SECRET}@b:26379")
    assert SECRET not in webhook_url(f"https://acme.bitrix24.com/rest/1/{SECRET}/")


def test_the_http_apps_log_lines_are_masked_too(runtime: Runtime) -> None:
    """`b24q serve` (uvicorn): a traceback or an access line on uvicorn's loggers goes through the filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(handler)
    try:
        app = create_app(lambda: runtime)

        async def served() -> None:
            async with app.router.lifespan_context(app):  # what uvicorn runs at start
                uvicorn_error.error("install failed: auth[access_token]=tok-SECRET-1&auth[domain]=acme.bitrix24.com")

        asyncio.run(served())
    finally:
        uvicorn_error.removeHandler(handler)
    assert "tok-SECRET-1" not in out.getvalue() and MASK in out.getvalue()


def test_uvicorns_own_access_formatter_reads_a_masked_line() -> None:
    """`uvicorn edges.http.app:app` with uvicorn's default logging: its access formatter unpacks the record's
    five arguments, so the filter masks them in place and keeps their shape (a record whose arguments were
    dropped would raise in the formatter: a lost line and a traceback per request)."""
    from uvicorn.logging import AccessFormatter

    secret = "AUTHsecret0123456789abcdef"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", f"/b24/install?AUTH_ID={secret}&member_id=abc", "1.1", 200),
        None,
    )
    assert RedactSecrets().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert secret not in line and f"AUTH_ID={MASK}" in line and line.endswith(" 200 OK"), line


#: the characters and words the patterns are made of, and a line Celery logs for every job
_PIECES = st.sampled_from(
    [
        *"=[]&?:/@\"'\\ x1",
        *[
            "%3D",
            "%3d",
            "%5B",
            "%5D",
            "://",
            "/rest/",
            "/REST/",
            "/rest/1/",
            "token",
            "TOKEN",
            "secret",
            "auth",
            "Auth",
            "auth_id",
            "refresh_id",
        ],
        *[
            "password",
            "passwd",
            "pwd",
            "key",
            "api_key",
            "sig",
            "code",
            "client_",
            "access_",
            "refresh_",
            "_token",
            "redis",
            "https",
            "user",
        ],
        "succeeded in 0.09s: {'outcome': 'applied'}",
    ]
)


@hsettings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_the_quick_check_never_lets_a_maskable_text_through(text: str) -> None:
    """`redact` skips the substitutions when a text holds nothing any of them needs; it must answer as they do."""
    assert redact(text) == _substituted(text)
