"""How every b24q process writes its log: one line per record on stderr, with its time, level and logger, as
text or (`B24Q_LOG_FORMAT=json`, for log shippers) one JSON object per line; secrets masked
(`workers.redaction.RedactSecrets` on every handler).

Workers keep Celery's handlers and get these formatters (`format_celery_handlers`, at Celery's logging
signals); `b24q serve` hands `uvicorn_config` to uvicorn, so that uvicorn's lines, its access log and b24q's
own lines (install applied, events) are written the same way; the CLI calls `setup`.

Examples:
    >>> formatter("json").format(logging.makeLogRecord({"msg": "hi %s", "args": ("there",)}))[:9]
    '{"time": '
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from workers.redaction import RedactSecrets

Format = Literal["text", "json"]

#: text lines: `2026-12-07 02:30:01,123 INFO edges.lifecycle: event ONAPPINSTALL for portal …`
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the loggers of b24q's own lines
OWN = ("workers", "tasks", "edges", "emulator")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO 8601, UTC), level, logger, message, and the
    traceback (already masked by `RedactSecrets`) as `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.processName and record.processName != "MainProcess":
            out["process"] = record.processName
        return json.dumps(out, ensure_ascii=False, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def formatter(fmt: Format) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT)


def handler(fmt: Format) -> logging.Handler:
    """A stderr handler in `fmt` that masks secrets."""
    out = logging.StreamHandler()
    out.setFormatter(formatter(fmt))
    out.addFilter(RedactSecrets())
    return out


def setup(fmt: Format, level: int = logging.INFO) -> None:
    """The root logger writes to stderr in `fmt` (its other handlers are replaced); b24q's own loggers at
    `level`, everyone else's at WARNING."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(logging.WARNING)
    for name in OWN:
        logging.getLogger(name).setLevel(level)


def format_celery_handlers(logger: logging.Logger, fmt: Format) -> None:
    """Celery's handlers on `logger` write in `fmt` (Celery has set them up; the redaction filter is
    `workers.celery`'s)."""
    for each in logger.handlers:
        each.setFormatter(formatter(fmt))


def uvicorn_config(fmt: Format) -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers and the root logger (b24q's own lines) on one stderr handler in
    `fmt`, masking secrets."""
    redact = {"()": "workers.redaction.RedactSecrets"}
    form = {"()": "workers.observe.logs.JsonFormatter"} if fmt == "json" else {"format": TEXT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": redact},
        "formatters": {"b24q": form},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "b24q",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            **{name: {"level": "INFO"} for name in OWN},
            # uvicorn's lines go to the root's handler, once
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "INFO"},
        },
    }
