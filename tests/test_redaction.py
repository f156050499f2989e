"""Secret masking in free text (log records): every form a secret takes in what b24q logs."""

from __future__ import annotations

import logging

import pytest

from workers.redaction import MASK, RedactSecrets, redact, redis_url, webhook_url

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


def test_urls_for_people() -> None:
    assert redis_url(f"rediss://:{SECRET}@redis.example:6380/0") == f"rediss://:{MASK}@redis.example:6380/0"
    assert SECRET not in redis_url(f"sentinel://:{SECRET}@a:26379;sentinel://:{SECRET}@b:26379")
    assert SECRET not in webhook_url(f"https://acme.bitrix24.com/rest/1/{SECRET}/")
