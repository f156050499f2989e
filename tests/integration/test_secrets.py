"""Secrets: a full run with every worker at DEBUG, then a search for the real secrets in everything it left.

The workers also log httpx's request lines, as a user who turns them on does (`tests/integration/loud_worker.py`):
the OAuth refresh's URL carries the client_secret and the refresh token, a webhook portal's URL its code, so
the worker's log redaction (`workers/redaction.py`) must mask real lines; the run checks that it did.

The secrets are the emulator's own: the app's client_secret, every access and refresh token issued
during the run (the first pair and the refreshed one), the webhook's code, the Redis password and the
key that encrypts tokens at rest. They must not be in worker logs (any level), task messages and task
events (what Flower shows), the job ledger, dead letters, any Redis key besides the (encrypted)
portal registry, or the CLI's output. Also: tokens at rest are encrypted; the client_secret never
reaches a REST endpoint; http:// is refused off loopback; Redis with a password (and TLS when the
machine's redis-server supports it) works end to end.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from edges import cli
from tasks import producer
from tasks.definitions import TASKS
from tests.integration.conftest import FAST, wait_for
from workers.celery import app, configure
from workers.errors import ConfigError
from workers.localdev.localstack import LocalStack
from workers.localdev.processes import CLIENT_SECRET
from workers.localdev.redisserver import RedisServer, TlsFiles, tls_capable_binary
from workers.portals.crypto import PREFIX, TokenCipher, generate_key
from workers.portals.endpoints import check_url
from workers.portals.registry import PortalRegistry
from workers.runtime import Runtime, get_runtime, set_runtime
from workers.settings import Settings, get_settings

pytestmark = pytest.mark.integration

REDIS_PASSWORD = "redis-pw-5d1e7c0f"
OLD_KEY, NEW_KEY = generate_key(), generate_key()


def _dump_redis(client: redis.Redis, skip_registry: str) -> dict[str, str]:
    """Every key and its value as text, except the portal registry (which holds the encrypted tokens)."""
    out: dict[str, str] = {}
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode(errors="replace")
        if fnmatch.fnmatchcase(key, skip_registry):
            continue
        kind = client.type(raw_key).decode()
        if kind == "string":
            value: Any = client.get(raw_key)
        elif kind == "hash":
            value = client.hgetall(raw_key)
        elif kind == "list":
            value = client.lrange(raw_key, 0, -1)
        elif kind == "set":
            value = client.smembers(raw_key)
        elif kind == "zset":
            value = client.zrange(raw_key, 0, -1, withscores=True)
        else:
            value = kind
        out[key] = repr(value)
    return out


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack on a password-protected Redis, tokens encrypted at rest, workers logging at DEBUG with httpx's
    request lines on."""
    server = RedisServer(password=REDIS_PASSWORD, directory=str(tmp_path_factory.mktemp("redis"))).start()
    # task events on from the start: Flower's view (task-received events with their arguments) is searched too
    stack = LocalStack(
        redis_url=server.url, settings={**FAST, "token_keys": f"{NEW_KEY},{OLD_KEY}", "task_events": True}
    )
    stack.__enter__()
    try:
        stack.start_workers(2, concurrency=16, loglevel="DEBUG", app="tests.integration.loud_worker")
        yield stack
    finally:
        stack.__exit__(None, None, None)
        server.close()


def _stop_when(stop: threading.Event, receiver: Any) -> None:
    stop.wait()
    receiver.should_stop = True


def _collect_events(stop: threading.Event, events: list[dict[str, Any]]) -> None:
    """What Flower sees: every event on the broker, through one long-lived receiver as Flower keeps one.

    (Events are fanned out with Redis PUBLISH: a receiver that re-subscribes in a loop misses what is
    published between two subscriptions, so it stays subscribed, and reconnects only after an error.)"""

    while not stop.is_set():
        try:
            with app.connection_for_read() as conn:
                receiver = app.events.Receiver(conn, handlers={"*": events.append})
                threading.Thread(target=_stop_when, args=(stop, receiver), daemon=True).start()
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # keep it for the assertion message
            events.append({"type": "receiver-error", "error": repr(exc)})
            time.sleep(0.1)


def _wait_event(events: list[dict[str, Any]], kind: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.get("type") == kind for e in events):
        assert time.monotonic() < deadline, f"no {kind} event in {timeout} s: {events[:3]}"
        time.sleep(0.1)


def test_no_secret_leaks_anywhere_in_a_full_run(secure_stack: LocalStack, tmp_path: Path) -> None:
    stack = secure_stack
    rt = get_runtime()
    domain, hook = "secrets-oauth.bitrix24.test", "secrets-hook.bitrix24.test"
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_collect_events, args=(stop, events), daemon=True)
    watcher.start()
    _wait_event(events, "worker-heartbeat")  # the receiver is subscribed: nothing after this point is missed
    try:
        info = stack.add_portal(domain, auto_messages=True, auto_connectors=True)
        stack.emulator.admin("POST", f"portals/{domain}/senders", {"code": "smsgw", "name": "SMS"})
        hook_info = stack.emulator.add_portal(hook)
        env = stack.env
        cli = [sys.executable, "-m", "edges.cli"]
        outputs: list[str] = []

        def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, input=stdin, timeout=60)
            outputs.append(f"{done.stdout}\n{done.stderr}")  # (the command line is the caller's, not output)
            return done

        # the webhook portal is added through the CLI (its URL holds the secret code)
        assert run_cli("portal", "add", hook, "--webhook", hook_info["webhook_url"]).returncode == 0
        ids = producer.enqueue_many(
            [
                ("status-update", {"portal": domain, "code": "smsgw", "message_id": f"s{i}", "status": "sent"})
                for i in range(20)
            ]
            + [("mark-unread", {"portal": hook, "dialog_id": f"chat{i + 1}", "message_id": i + 1}) for i in range(10)]
        )
        assert set(wait_for(ids).values()) == {"applied"}
        # tokens expire mid-run: one refresh, a second pair of tokens
        stack.emulator.expire(domain)
        later = producer.enqueue_many(
            [
                (
                    "delivery-confirmation",
                    {
                        "portal": domain,
                        "connector": "c1",
                        "line": 1,
                        "messages": [
                            {
                                "im": {"chat_id": 1, "message_id": 100 + i},
                                "message": {"id": [f"e{i}"], "date": 1},
                                "chat": {"id": "x"},
                            }
                        ],
                    },
                )
                for i in range(10)
            ]
        )
        dead = producer.enqueue_sender_update(portal=domain, code="not-registered", handler="https://sms.example.com/h")
        raw_bad = TASKS["status-update"].apply_async(kwargs={"portal": domain, "code": "smsgw", "status": "lost"})
        assert set(wait_for(later).values()) == {"applied"}
        assert wait_for([dead, raw_bad.id]) == {dead: "dead", raw_bad.id: "dead"}
        # the OAuth server is down during a refresh: errors are raised, logged and stored
        stack.emulator.set_faults(domain, oauth_down=True)
        stack.emulator.expire(domain)
        flaky = producer.enqueue_mark_unread(portal=domain, dialog_id="chat3", message_id=77)
        time.sleep(3)
        stack.emulator.set_faults(domain, oauth_down=False)
        assert wait_for([flaky], timeout=60) == {flaky: "applied"}
        refreshed = rt.registry.get(domain)
        assert refreshed is not None and refreshed.access_token != info["access_token"]

        # the CLI's read views
        for args in (
            ("portal", "list"),
            ("portal", "list", "--json"),
            ("job", "show", ids[0]),
            ("job", "show", later[0], "--json"),
            ("dead", "list"),
            ("dead", "list", "--json"),
            ("dead", "show", dead),
            ("status",),
        ):
            run_cli(*args)
        # re-authorisation through the CLI: the tokens go in, none come out
        fresh = stack.emulator.admin("POST", f"portals/{domain}/tokens", {})
        assert (
            run_cli(
                "portal",
                "auth",
                domain,
                "--access-token",
                fresh["access_token"],
                "--refresh-token",
                fresh["refresh_token"],
            ).returncode
            == 0
        )
        bad_url = run_cli("portal", "add", "evil", "--webhook", "http://evil.example.com/rest/1/" + "c0de5ecret" + "/")
        assert bad_url.returncode != 0 and "https" in bad_url.stderr
        _wait_event(events, "task-received")
    finally:
        stop.set()
        watcher.join(5)

    secrets = {
        "client_secret": CLIENT_SECRET,
        "first access token": info["access_token"],
        "first refresh token": info["refresh_token"],
        "refreshed access token": refreshed.access_token,
        "refreshed refresh token": refreshed.refresh_token,
        "reauth access token": fresh["access_token"],
        "reauth refresh token": fresh["refresh_token"],
        "webhook code": hook_info["webhook_url"].rstrip("/").rsplit("/", 1)[-1],
        "redis password": REDIS_PASSWORD,
        "token key (new)": NEW_KEY,
        "token key (old)": OLD_KEY,
    }
    for worker in stack.workers:
        worker._log.flush()
    places = {
        **{f"log {w.name}": w.log_path.read_text(errors="replace") for w in stack.workers},
        **{f"redis {k}": v for k, v in _dump_redis(rt.redis, rt.keys.portal_pattern()).items()},
        "task events": json.dumps(events, default=str),
        "cli output": "\n".join(outputs),
    }
    assert sum(len(v) for v in places.values()) > 100_000  # the run really produced DEBUG logs and data
    assert any("DEBUG" in v for k, v in places.items() if k.startswith("log "))
    assert any(e.get("type") == "task-received" for e in events), f"no task events captured: {events[:3]}"
    leaks = [(what, where) for what, secret in secrets.items() for where, text in places.items() if secret in text]
    context = {}
    for what, where in leaks:
        at = places[where].find(secrets[what])
        context[f"{what} in {where}"] = " ".join(places[where][max(0, at - 300) : at + 60].split())
    assert leaks == [], json.dumps(context, indent=1)
    # secrets really reached the worker's log records: httpx's lines for the refreshes and the webhook calls,
    # masked by the redaction filter
    logs = "\n".join(v for k, v in places.items() if k.startswith("log "))
    refresh_lines = [line for line in logs.splitlines() if "HTTP Request: GET" in line and "grant_type=" in line]
    webhook_lines = [line for line in logs.splitlines() if "HTTP Request: POST" in line and f"/{hook}/rest/" in line]
    assert refresh_lines and all("client_secret=***" in line for line in refresh_lines), refresh_lines[:2]
    assert webhook_lines and all(re.search(r"/rest/\d+/\*\*\*/", line) for line in webhook_lines), webhook_lines[:2]

    # tokens at rest: the registry holds only ciphertext
    raw_record = rt.redis.hgetall(rt.keys.portal(domain))
    assert raw_record[b"access_token"].decode().startswith(PREFIX)
    assert raw_record[b"refresh_token"].decode().startswith(PREFIX)
    hook_record = rt.redis.hgetall(rt.keys.portal(hook))
    assert hook_record[b"endpoint"].decode().startswith(PREFIX)
    registry_text = repr(raw_record) + repr(hook_record)
    assert not [what for what, secret in secrets.items() if secret in registry_text]
    # the client_secret went to the OAuth server only
    for portal in (domain, hook):
        assert stack.emulator.state(portal)["counters"]["client_secret_seen"] == 0
    assert stack.emulator.state(domain)["counters"]["refreshes"] >= 1


def test_key_rotation_keeps_every_record_readable(secure_stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    """B24Q_TOKEN_KEYS=new,old reads records of both keys; rekey moves them all to the new key; then the
    old key can go. A record no configured key decrypts is an error that names no secret."""
    rt = get_runtime()
    s_old = Settings(**{**rt.settings.model_dump(), "token_keys": OLD_KEY})
    old_registry = PortalRegistry(rt.redis, s_old)
    old_registry.add_oauth(
        "rotated", "https://rotated.bitrix24.com/rest/", "acc-123456", "ref-654321", time.time() + 3600
    )
    both = rt.registry  # new,old
    portal = both.get("rotated")
    assert portal is not None and portal.access_token == "acc-123456"
    assert cli.main(["portal", "rekey"]) == 0  # = both.rekey(), through the CLI
    rekeyed = re.search(r"re-encrypted (\d+) portal record", capsys.readouterr().out)
    assert rekeyed is not None and int(rekeyed.group(1)) >= 1
    assert cli.main(["portal", "genkey"]) == 0
    TokenCipher([capsys.readouterr().out.strip()])  # a usable key
    s_new = Settings(**{**rt.settings.model_dump(), "token_keys": NEW_KEY})
    new_only = PortalRegistry(rt.redis, s_new)
    assert new_only.get("rotated").refresh_token == "ref-654321"  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        old_registry.get("rotated")
    assert "B24Q_TOKEN_KEYS" in str(info.value) and "ref-654321" not in str(info.value)
    plain = PortalRegistry(rt.redis, Settings(**{**rt.settings.model_dump(), "token_keys": ""}))
    with pytest.raises(ConfigError, match="encrypted"):
        plain.get("rotated")
    with pytest.raises(ConfigError, match="not a Fernet key"):
        TokenCipher(["not-a-key"])
    both.remove("rotated")


def test_https_is_required_off_loopback() -> None:
    assert check_url("https://acme.bitrix24.com/rest", False, "x") == "https://acme.bitrix24.com/rest/"
    assert check_url("http://127.0.0.1:8080/rest/", False, "x")
    assert check_url("http://localhost/rest/", False, "x")
    assert check_url("http://[::1]:80/rest/", False, "x")
    for url in ("http://acme.bitrix24.com/rest/", "http://10.0.0.5/rest/", "http://127.0.0.1.evil.com/rest/"):
        with pytest.raises(ConfigError, match="https"):
            check_url(url, False, "client_endpoint")
        assert check_url(url, True, "x")  # explicitly allowed (B24Q_ALLOW_INSECURE_HTTP)
    for url in ("ftp://acme.bitrix24.com/", "javascript:alert(1)", "acme.bitrix24.com/rest/", "https:///rest/"):
        with pytest.raises(ConfigError, match="http"):
            check_url(url, True, "x")

    with pytest.raises(ConfigError, match="https"):
        Runtime(
            Settings(
                oauth_url="http://oauth.example.com/oauth/token/", client_id="app", redis_url="redis://127.0.0.1:1/0"
            )
        )


def test_redis_password_is_required_and_used(secure_stack: LocalStack) -> None:
    rt = get_runtime()
    url = rt.settings.redis_url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    assert rt.redis.ping()  # the stack (producer, workers) runs with the password from the URL


def _self_signed(directory: Path) -> TlsFiles:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(str(cert_path), str(key_path), str(cert_path))


def test_rediss_tls_end_to_end(tmp_path: Path) -> None:
    """A TLS-only redis-server (needs a binary built with TLS, such as Debian's): the producer and a real
    worker connect with rediss://, verifying the server's certificate."""
    binary = tls_capable_binary()
    if binary is None:
        pytest.skip("no redis-server built with TLS on this machine")
    server = RedisServer(
        tls=_self_signed(tmp_path), password=REDIS_PASSWORD, binary=binary, directory=str(tmp_path / "redis")
    ).start()
    try:
        assert server.url.startswith("rediss://")
        with LocalStack(redis_url=server.url, settings=FAST) as stack:
            stack.start_workers(1, concurrency=4, extra=["--without-mingle", "--without-gossip"])
            stack.add_portal("tls.bitrix24.test")
            job = producer.enqueue_mark_unread(portal="tls.bitrix24.test", dialog_id="chat1", message_id=1)
            assert wait_for([job], timeout=30) == {job: "applied"}
            log = stack.workers[0].log_path.read_text(errors="replace")
            assert "defaulting to insecure SSL" not in log  # the certificate was verified
        plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.ConnectionError):
            plain.ping()  # no plaintext listener
        # a certificate from another CA is refused by both of b24q's Redis clients (its own and the broker's)
        (tmp_path / "other").mkdir()
        other_ca = _self_signed(tmp_path / "other").ca
        assert server.tls is not None
        wrong = server.url.replace(quote(server.tls.ca, safe=""), quote(other_ca, safe=""))
        assert wrong != server.url
        wrong_settings = Settings.model_validate({**FAST, "redis_url": wrong})
        rt = Runtime(wrong_settings)
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            rt.redis.ping()
        configure(wrong_settings)
        with pytest.raises(Exception, match="certificate verify failed"):
            app.connection_for_write().ensure_connection(max_retries=0)
    finally:
        configure(get_settings())
        set_runtime(None)
        server.close()
