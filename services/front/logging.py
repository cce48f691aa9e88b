"""Structured JSON logs of the front: one object per line, never a patient identifier.

The front never receives names, dates or case identifiers (anatomies are known by their
content hash), and logs only fields from ``ALLOWED_FIELDS``: anything else passed to
``log_event`` is dropped, so a future caller cannot leak a free-form value by accident.
Error texts from the optimizer name fields and files of the upload, not patients.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "ectplan.front"
ALLOWED_FIELDS = frozenset({
    "job_id", "anatomy_id", "client_id", "method", "code", "state", "kind", "phase", "trials",
    "trials_done", "seconds", "attempt", "workers", "queue_length", "error_type", "error",
    "address", "port", "tls", "mtls", "auth", "database", "bytes", "reused", "solved_pairs",
    "reused_pairs", "stopped_by", "runner", "count", "exploration",
})  # fmt: skip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def configure(level: str = "info", stream: Any = None) -> None:
    """JSON lines on stderr (or ``stream``) for the front's logger."""
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def log_event(
    event: str, *, level: int = logging.INFO, exc_info: bool = False, **fields: Any
) -> None:
    """Log ``event`` with only the allowed fields (others are dropped, see the docstring)."""
    safe = {k: v for k, v in fields.items() if k in ALLOWED_FIELDS and v is not None}
    get_logger().log(level, event, extra={"fields": safe}, exc_info=exc_info)
