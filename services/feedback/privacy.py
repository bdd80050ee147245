"""Keep NHS numbers out of logs, whatever the log level.

The service never logs an NHS number itself (validation errors name the field, not the value),
but libraries can: at DEBUG, aiokafka logs whole produce and fetch requests, so the raw intake
topic's messages would be written out. :func:`install_log_redaction` attaches a filter to the
loggers of the libraries and packages this service runs that rewrites any 10-digit run (spaces
or dashes allowed) to ``[redacted]``. Filters run only for records that pass the level check,
so at the normal levels (INFO, aiokafka and FastStream at WARNING) it costs nothing.
"""

from __future__ import annotations

import logging

from services.feedback.domain import redact

PREFIXES = ("aiokafka", "faststream", "uvicorn", "fastapi", "starlette", "asyncpg", "httpx", "httpcore",
            "services", "shared")
# Loggers that exist only once their module logs; created here so they get the filter too.
KNOWN = ("aiokafka.conn", "aiokafka.producer.producer", "aiokafka.producer.sender", "aiokafka.consumer.fetcher",
         "aiokafka.consumer.consumer", "aiokafka.consumer.group_coordinator", "aiokafka.cluster", "aiokafka",
         "faststream", "faststream.access", "faststream.feedback", "uvicorn", "uvicorn.error", "uvicorn.access",
         "services.feedback.consumer", "shared.service", "shared.consumer", "shared.outbox", "")


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep it, but never its arguments
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Idempotent: attach the filter to every matching logger that exists now and the known ones."""
    names = set(KNOWN) | {n for n in logging.root.manager.loggerDict if n.split(".")[0] in PREFIXES}
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
