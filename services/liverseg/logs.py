"""One JSON object per line on stderr, with the stage, run and case attached, and secrets scrubbed.

Pods' stdout/stderr go to the cluster's log collector, which indexes JSON lines field by field. Whatever a
message or an exception says, the store's secret key (and any other value registered here) is replaced by
``***`` before the line is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timezone

from liverseg.settings import ENV_DICOMWEB_PASSWORD, ENV_DICOMWEB_TOKEN, ENV_SECRET_KEY

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("liverseg_log_context",
                                                                                  default=None)
_secrets: set[str] = set()
# Attributes every LogRecord has; anything else came in through ``extra=`` and is emitted as a field.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
ENV_SECRET_ENVS = ("LIVERSEG_ARGO_TOKEN", ENV_SECRET_KEY, ENV_DICOMWEB_PASSWORD, ENV_DICOMWEB_TOKEN)


def register_secret(value: str | None) -> None:
    """Never print ``value``; short strings are ignored (they would mask ordinary words)."""
    if value and len(value) >= 6:
        _secrets.add(value)
        _secrets.add(json.dumps(value)[1:-1])  # as it appears inside a JSON line (quotes, backslashes, non-ASCII)


def scrub(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **(_context.get() or {}),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str))


def configure(level: str | None = None, **context: str) -> None:
    """Send all logging to stderr as JSON lines; ``context`` (stage, run_id, …) goes on every line."""
    for name in ENV_SECRET_ENVS:
        register_secret(os.environ.get(name))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LIVERSEG_LOG_LEVEL", "INFO"))
    # Third-party chatter (urllib3 retries, MONAI deprecations) stays at warning level.
    for noisy in ("urllib3", "monai", "highdicom", "pydicom", "nibabel", "PIL", "dicomweb_client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python warnings would reach stderr as plain text: route them through logging (one JSON line each).
    logging.captureWarnings(True)
    _context.set({k: v for k, v in context.items() if v is not None})


@contextlib.contextmanager
def bound(**fields: str) -> Iterator[None]:
    """Attach fields (e.g. ``case``) to every line logged inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)
