"""Logging set-up. Only the entry point calls `configure_logging`; everything else just asks
structlog for a logger and logs short snake_case events with key/values."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class BufferedLineLogger:
    """A structlog logger that writes rendered lines in batches.

    Writing and flushing each line is a system call per request on the hot path. Info and
    debug lines (the access log) wait up to `flush_interval` seconds, or until `max_buffer`
    characters, and go out in one write; a warning or an error flushes at once, taking every
    earlier line along, so order is kept. What a hard kill can lose is at most
    `flush_interval` of info lines; a normal exit flushes (atexit).
    """

    def __init__(
        self, stream: TextIO | None = None, flush_interval: float = 0.05, max_buffer: int = 1 << 16
    ):
        self._stream = stream  # None: whatever sys.stdout is when the lines go out
        self._interval = flush_interval
        self._max = max_buffer
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def _buffer(self, message: str) -> None:
        self._lines.append(message)
        self._size += len(message)
        if self._size >= self._max:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (start-up, CLI): nothing to batch with
                self.flush()
                return
            self._timer = loop.call_later(self._interval, self.flush)

    def _now(self, message: str) -> None:
        self._lines.append(message)
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            stream = self._stream or sys.stdout
            stream.write("\n".join(lines) + "\n")
            stream.flush()

    msg = debug = info = _buffer
    warning = warn = error = err = critical = fatal = exception = _now


class LeanBoundLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, without its dispatch: an event goes through the
    configured processors and out as there, but its fields are packed once, not three times
    (a sixth of an access line's cost). `lean_logger(level)` gives the class for a level."""

    min_level = logging.DEBUG

    def _emit(self, method: str, event: str, args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
        if args:  # the standard library's interpolation, as structlog's loggers do it
            one_mapping = len(args) == 1 and isinstance(args[0], dict) and args[0]
            event = event % (args[0] if one_mapping else args)
        context = self._context
        event_dict: Any = {**context, **fields} if context else fields
        event_dict["event"] = event
        logger = self._logger
        try:
            for processor in self._processors:
                event_dict = processor(logger, method, event_dict)
        except structlog.DropEvent:
            return None
        write = getattr(logger, method)
        if isinstance(event_dict, str | bytes | bytearray):
            return write(event_dict)
        if isinstance(event_dict, tuple):
            return write(*event_dict[0], **event_dict[1])
        return write(**event_dict)

    def log(self, level: int, event: str, *args: Any, **fields: Any) -> Any:
        if level < self.min_level:
            return None
        return self._emit(_METHODS.get(level, "info"), event, args, fields)

    def debug(self, event: str, *args: Any, **fields: Any) -> Any:
        return self.log(logging.DEBUG, event, *args, **fields)

    def info(self, event: str, *args: Any, **fields: Any) -> Any:
        if self.min_level > logging.INFO:
            return None
        return self._emit("info", event, args, fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> Any:
        return self.log(logging.WARNING, event, *args, **fields)

    def error(self, event: str, *args: Any, **fields: Any) -> Any:
        return self.log(logging.ERROR, event, *args, **fields)

    def critical(self, event: str, *args: Any, **fields: Any) -> Any:
        return self.log(logging.CRITICAL, event, *args, **fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> Any:
        fields.setdefault("exc_info", True)
        return self.log(logging.ERROR, event, *args, **fields)

    msg = info
    warn = warning
    fatal = critical


_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def lean_logger(level: int) -> type[LeanBoundLogger]:
    return type(f"LeanBoundLogger{level}", (LeanBoundLogger,), {"min_level": level})


# Key material that must never reach a log line: API keys of the usual shapes and bearer
# tokens, wherever they appear in a value; and whole values under names that hold secrets.
_SECRET_IN_TEXT = re.compile(
    r"(?i)\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}|(?<=bearer )[^\s\"',]{8,}|(?<=api-key: )\S{8,}"
)
_SECRET_NAMES = frozenset(
    {"authorization", "api_key", "api-key", "apikey", "key", "password", "secret", "token"}
)
REDACTED = "[redacted]"


def redact_secrets(
    logger: object, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: the one place secrets are taken out of every log event.

    Runs on every line (the access line's 18 fields among them), so its checks are written
    out in the loop rather than called: the two function calls a field were a quarter of its
    cost."""
    for name, value in event.items():
        if value is None:
            continue
        # Event keys are code's identifiers, nearly always lower case already: lower-casing
        # (an allocation) only the others.
        if name in _SECRET_NAMES or (not name.islower() and name.lower() in _SECRET_NAMES):
            event[name] = REDACTED
        elif isinstance(value, str):
            # What every match of _SECRET_IN_TEXT contains, once lower-cased: a test far
            # cheaper than the regex. Lower-casing folds every character the regex's (?i)
            # matches to these letters but U+017F and U+0131 (long s, dotless i), and no
            # marker holds an s or an i. (Three `in` tests: a generator over a tuple of the
            # markers costs three times as much.)
            low = value.lower()
            if "k-" in low or "bearer " in low or "-key: " in low:
                event[name] = _SECRET_IN_TEXT.sub(REDACTED, value)
        elif isinstance(value, bytes):
            event[name] = _SECRET_IN_TEXT.sub(REDACTED, value.decode("utf-8", "replace"))
    return event


class IsoTimestamp:
    """A structlog processor: `timestamp` in ISO 8601, UTC, to the microsecond, as
    `datetime.now(timezone.utc).isoformat()` spells it with a `Z`. The date and time up to the
    second are formatted once a second, not once a line (a datetime and its isoformat were
    a sixth of an access line's cost)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: object, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        micro = round((now - second) * 1_000_000)
        if micro == 1_000_000:
            second, micro = second + 1, 0
        if second != self._second:
            self._second = second
            stamp = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S")
        event["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        return event


def json_line(event: Any, **_: Any) -> str:
    """One event as a JSON line, by orjson (a tenth of json.dumps's time on an access line);
    what orjson refuses (an integer over 64 bits, keys that are not strings) by json."""
    try:
        return orjson.dumps(event, default=repr).decode()
    except TypeError:
        return json.dumps(event, default=repr)


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> BufferedLineLogger:
    """JSON lines on stdout (journald takes them), or a readable console when on a terminal."""
    use_json = fmt == "json" or (fmt == "auto" and not (stream or sys.stdout).isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=json_line)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        IsoTimestamp(),
    ]
    if use_json:
        processors.append(structlog.processors.format_exc_info)
    processors += [redact_secrets, renderer]
    output = BufferedLineLogger(stream)
    atexit.register(output.flush)
    structlog.configure(
        processors=processors,
        wrapper_class=lean_logger(_LEVELS[level]),
        logger_factory=lambda *args: output,
        cache_logger_on_first_use=True,
    )
    # aiohttp, asyncio and friends log through the standard library: their lines go through
    # the same pipeline (redaction, JSON), one line each, and within a budget, since some can
    # be caused by anyone who connects.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    root.setLevel(max(_LEVELS[level], logging.INFO))
    return output


class LogBudget:
    """At most `rate` lines a second on average, `burst` at once; the lines refused are
    counted, and the next line that passes says how many (`suppressed`)."""

    __slots__ = ("_burst", "_level", "_rate", "_stamp", "suppressed")

    def __init__(self, rate: float = 5.0, burst: int = 20) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._level = float(burst)
        self._stamp = time.monotonic()
        self.suppressed = 0

    def take(self) -> int | None:
        """None if this line must be dropped; else how many were dropped since the last."""
        now = time.monotonic()
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._level < 1:
            self.suppressed += 1
            return None
        self._level -= 1
        dropped, self.suppressed = self.suppressed, 0
        return dropped


class StdlibBridge(logging.Handler):
    """Standard-library log records into structlog: event `stdlib_log` with the logger's
    name, the message (capped) and the exception, all through `redact_secrets`, within a
    `LogBudget`."""

    def __init__(self) -> None:
        super().__init__()
        self._budget = LogBudget()

    def emit(self, record: logging.LogRecord) -> None:
        suppressed = self._budget.take()
        if suppressed is None:
            return
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        structlog.get_logger(record.name).log(
            record.levelno,
            "stdlib_log",
            logger=record.name,
            message=message[:1000],
            exc_info=record.exc_info or None,
            suppressed=suppressed or None,
        )
