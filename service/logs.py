"""Logging set-up: plain text or one JSON object per line; either way, one record is one line."""

from __future__ import annotations

import json
import logging
import re
import time

# Control characters (C0, DEL, C1) and Unicode line/paragraph separators: in a logged field (a request
# path, say) they would start a forged line of their own.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A text-format field value with these is quoted, so `path=/a status=200` cannot fake another field.
NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f]')


def escape(text: str) -> str:
    """Control characters as visible escapes: '\\n' -> '\\\\n', '\\x1b' -> '\\\\x1b'."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def text_value(value: object) -> str:
    """A field value for the text format: as is, or JSON-quoted (escapes included) when it needs it."""
    text = str(value)
    if text and not NEEDS_QUOTES.search(text):
        return text
    return escape(json.dumps(text, ensure_ascii=False))  # json leaves DEL, C1 and U+2028/9 as they are


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls; ensure_ascii escapes DEL, C1 and U+2028/9 as \uXXXX.
        return json.dumps(entry, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The message is escaped; a traceback that follows (formatException) keeps its own lines.
        record.message = escape(record.getMessage())
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            head, sep, trace = line.partition("\n")
            line = head + " " + " ".join(f"{escape(str(k))}={text_value(v)}" for k, v in fields.items()) + sep + trace
        return line


class DropCutResponseNotice(logging.Filter):
    """uvicorn reports a response that never completed as an error; when the service cuts a stream on
    purpose (drain deadline), its access log line already says so (outcome=cut)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("service", "model", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.error").addFilter(DropCutResponseNotice())
    # One line per request comes from our middleware; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
