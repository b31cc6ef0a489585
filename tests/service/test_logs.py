"""Log lines (service/logs.py): one record is one line in either format, and no field can forge another."""

from __future__ import annotations

import json
import logging

from service.logs import JSONFormatter, TextFormatter


def record(message: str, fields: dict[str, object] | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("service.access", logging.INFO, __file__, 1, message, None, None)
    if fields is not None:
        entry.fields = fields
    return entry


def test_json_is_one_line_with_the_fields() -> None:
    line = JSONFormatter().format(record("request", {"path": "/a\nb\u2028c\x1b", "status": 200}))
    assert "\n" not in line and "\u2028" not in line and "\x1b" not in line
    entry = json.loads(line)
    assert (entry["message"], entry["level"], entry["logger"]) == ("request", "info", "service.access")
    assert (entry["path"], entry["status"]) == ("/a\nb\u2028c\x1b", 200)
    assert entry["time"].endswith("Z")


def test_text_quotes_fields_that_could_fake_another() -> None:
    formatter = TextFormatter("%(message)s")
    line = formatter.format(record("request", {"path": "/a status=500", "status": 200, "empty": ""}))
    assert line == 'request path="/a status=500" status=200 empty=""'
    assert formatter.format(record("evil\nforged line")) == "evil\\nforged line"
