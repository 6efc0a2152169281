"""Each run's own log: what the function logged and printed during one attempt.

The dispatcher wraps the call of a task's function in :func:`capture`; what the function logs
(through the root logger and its children, and Celery's ``celery.task`` loggers, at
``ORCHESTRATOR["RUN_LOG_LEVEL"]`` and above) and prints (``sys.stdout``, ``sys.stderr``) while it
runs is kept in a :class:`RunLog` and stored in ``TaskRun.log``.

How it stays out of the way:

* One :class:`RunLogHandler` is added to the root logger (and to ``celery.task``, which does
  not propagate), and one :class:`StreamProxy` replaces ``sys.stdout`` and ``sys.stderr``, the
  first time a run is captured. Both route by a :class:`contextvars.ContextVar` that holds the
  current attempt's :class:`RunLog`: each thread and each greenlet (gevent >= 20.12) has its own
  context, so two tasks running at once in one worker process never see each other's lines.
  Outside a run they do nothing.
* The worker's own logging is unchanged: no logger's level is touched (the handler filters by
  level itself), every other handler gets every record as before, and printed text still
  reaches the stream it went to. Records below a logger's effective level are never created,
  so a worker started with ``--loglevel=WARNING`` records no INFO lines in the run log either.
* Memory is bounded: a run keeps at most ``ORCHESTRATOR["RUN_LOG_MAX_BYTES"]`` bytes (plus the
  line being written) while it runs, dropping the oldest lines; the stored text starts with a
  marker saying how much was cut.
* Secrets are masked line by line as they arrive (:func:`redact_run_log`), before anything is
  cut, so a cut never leaves half a secret in clear.

Threads that the function starts itself run in a fresh context and are not captured unless it
runs them with ``contextvars.copy_context().run``.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from orchestrator.conf import conf
from orchestrator.notifications.redact import redact
from orchestrator.sanitize import looks_secret

# How each captured record reads; its exception, if any, follows on the next lines.
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CUT_MARKER = "[… {count:,} earlier bytes cut …]\n"
# Loggers that do not propagate to the root but carry a task's lines: Celery's task loggers
# (``celery.utils.log.get_task_logger``) hang below ``celery.task``.
NON_PROPAGATING_LOGGERS = ("celery.task",)
# What a failure alert quotes of the log: its last lines, within a size every channel takes.
ALERT_TAIL_LINES = 20
ALERT_TAIL_CHARS = 1500

_current: contextvars.ContextVar[RunLog | None] = contextvars.ContextVar(
    "orchestrator_run_log", default=None
)
# Set while a StreamProxy hands text on to the stream it wraps: Celery's worker redirects
# ``sys.stdout`` to a logger, and that record must not be captured a second time.
_passing_through: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "orchestrator_run_log_passing_through", default=False
)
_install_lock = threading.Lock()


def redact_run_log(text: str, kwargs: Mapping[str, Any] | None) -> str:
    """``text`` with the secrets it may hold masked: the values of the run's keyword arguments
    whose names look secret (``token``, ``password``...), and anything shaped like a Slack
    token, webhook path or bearer header.

    The only place the run log is redacted: every captured line passes through here.
    """
    return redact(text, secret_values(kwargs))


def secret_values(value: Any, _depth: int = 0) -> list[str]:
    """The string values held under secret-looking keys of ``value``, at any depth."""
    found: list[str] = []
    if _depth > 64:
        return found
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and looks_secret(key):
                found.extend(_strings(item))
            else:
                found.extend(secret_values(item, _depth + 1))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(secret_values(item, _depth + 1))
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []


def _storable(text: str) -> bytes:
    # PostgreSQL text refuses NUL; unpaired surrogates cannot be encoded as UTF-8.
    return text.replace("\x00", "\ufffd").encode("utf-8", "backslashreplace")


class RunLog:
    """The log of one attempt, kept as a ring of at most ``max_bytes`` bytes.

    ``level`` is the lowest level of the records kept; ``kwargs`` are the arguments the
    function was called with (their secret-looking values are masked). Lines written to a
    stream are kept once complete (or when the run ends), so a secret printed in pieces is
    still masked whole. Safe to write from several threads.
    """

    def __init__(self, max_bytes: int, level: int, kwargs: Mapping[str, Any] | None) -> None:
        self.max_bytes = max(int(max_bytes), 0)
        self.level = level
        self._kwargs = kwargs
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._cut = 0
        self._partial: dict[str, str] = {}
        self._last_record: logging.LogRecord | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def add_record(self, record: logging.LogRecord, formatter: logging.Formatter) -> None:
        """Keep ``record`` (once: it may reach the handler through two loggers)."""
        if record.levelno < self.level:
            return
        with self._lock:
            if record is self._last_record:
                return
            self._last_record = record
        try:
            line = formatter.format(record)
        except Exception as err:  # a bad format string must not fail the task that logged it
            line = f"{record.levelname} {record.name}: unformattable log record ({err!r})"
        with self._lock:
            self._append(line + "\n")

    def add_text(self, stream: str, text: str) -> None:
        """Keep ``text`` written to ``stream`` ("stdout" or "stderr"), line by line."""
        if not text:
            return
        with self._lock:
            pending = self._partial.get(stream, "") + text
            head, newline, rest = pending.rpartition("\n")
            if newline:
                self._append(head + "\n")
            # A line that never ends must not grow without bound: past the limit it is kept as
            # it stands.
            if len(rest) > self.max_bytes:
                self._append(rest)
                rest = ""
            self._partial[stream] = rest

    def _append(self, text: str) -> None:
        data = _storable(redact_run_log(text, self._kwargs))
        if len(data) > self.max_bytes:
            self._cut += len(data) - self.max_bytes
            data = data[-self.max_bytes :]
        self._chunks.append(data)
        self._size += len(data)
        # Drop the oldest chunks while what remains still fills the limit.
        while self._chunks and self._size - len(self._chunks[0]) >= self.max_bytes:
            dropped = self._chunks.popleft()
            self._size -= len(dropped)
            self._cut += len(dropped)

    def text(self) -> str:
        """The log as stored: at most ``max_bytes`` bytes of UTF-8, its last ones, starting
        with a marker that says how many bytes were cut before it when any were."""
        with self._lock:
            for stream in sorted(self._partial):
                if self._partial[stream]:
                    self._append(self._partial[stream] + "\n")
            self._partial.clear()
            data = b"".join(self._chunks)
            cut = self._cut
        if not cut and len(data) <= self.max_bytes:
            return data.decode("utf-8")
        # The marker counts towards the limit and its length depends on the count it shows:
        # grow the count until it is exact (a step or two).
        total = cut + len(data)
        room = self.max_bytes
        while True:
            marker = CUT_MARKER.format(count=total - room).encode("utf-8")
            new_room = self.max_bytes - len(marker)
            if new_room == room or new_room <= 0:
                break
            room = new_room
        if room <= 0:
            return data[-self.max_bytes :].decode("utf-8", errors="ignore")
        # errors="ignore" drops only the bytes of a character that the cut split.
        return marker.decode("utf-8") + data[-room:].decode("utf-8", errors="ignore")


class RunLogHandler(logging.Handler):
    """Sends each record to the current attempt's :class:`RunLog`; outside a run it does
    nothing. Installed once on the root logger by :func:`install`."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter(LINE_FORMAT))

    def handle(self, record: logging.LogRecord) -> bool:
        # Overridden rather than emit(): most records arrive outside any run, and this way they
        # cost one context lookup, without taking the handler's lock.
        _keep_last_resort(record)
        run_log = _current.get()
        if run_log is None or _passing_through.get():
            return False
        assert self.formatter is not None  # set in __init__
        run_log.add_record(record, self.formatter)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


def _keep_last_resort(record: logging.LogRecord) -> None:
    """Print ``record`` as Python would had this handler not been there.

    With no handler anywhere on a record's way up, Python writes WARNING and above to stderr
    (``logging.lastResort``); our handler on the root logger would silence that.
    """
    last_resort = logging.lastResort
    if last_resort is None or record.levelno < last_resort.level:
        return
    if getattr(record, "_orchestrator_last_resort", False):  # reached us through two loggers
        return
    record._orchestrator_last_resort = True
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(not isinstance(h, RunLogHandler) for h in logger.handlers):
            return
        logger = logger.parent if logger.propagate else None
    last_resort.handle(record)


class StreamProxy:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: what the current attempt writes is also
    kept in its :class:`RunLog`; everything is passed on to the stream it replaced."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.wrapped = stream
        self.name = name

    def write(self, text: str) -> int:
        run_log = _current.get()
        if run_log is not None and isinstance(text, str):
            run_log.add_text(self.name, text)
        token = _passing_through.set(True)
        try:
            return self.wrapped.write(text)
        finally:
            _passing_through.reset(token)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


_HANDLER = RunLogHandler()


def install() -> None:
    """Add the handler and the stream proxies where they are missing (idempotent, cheap).

    Checked at every capture rather than once at start-up: Celery's worker empties the root
    logger's handlers and replaces ``sys.stdout`` when it sets up its logging, after the app
    has loaded.
    """
    with _install_lock:
        root = logging.getLogger()
        if _HANDLER not in root.handlers:
            root.addHandler(_HANDLER)
        for name in NON_PROPAGATING_LOGGERS:
            if name in logging.Logger.manager.loggerDict:
                logger = logging.getLogger(name)
                if _HANDLER not in logger.handlers:
                    logger.addHandler(_HANDLER)
        if not isinstance(sys.stdout, StreamProxy) and sys.stdout is not None:
            sys.stdout = StreamProxy(sys.stdout, "stdout")
        if not isinstance(sys.stderr, StreamProxy) and sys.stderr is not None:
            sys.stderr = StreamProxy(sys.stderr, "stderr")


def new_run_log(kwargs: Mapping[str, Any] | None) -> RunLog:
    """An empty log for an attempt called with ``kwargs``, with the limits of the settings."""
    return RunLog(conf.RUN_LOG_MAX_BYTES, conf.RUN_LOG_LEVEL, kwargs)


@contextmanager
def capture(run_log: RunLog) -> Iterator[RunLog]:
    """Keep what the code inside the block logs and prints in ``run_log`` (in this thread or
    greenlet only). With ``RUN_LOG_MAX_BYTES`` at 0 nothing is installed or kept."""
    if not run_log.enabled:
        yield run_log
        return
    install()
    token = _current.set(run_log)
    try:
        yield run_log
    finally:
        _current.reset(token)


def tail(text: str, lines: int = ALERT_TAIL_LINES, chars: int = ALERT_TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text``, within ``chars`` characters (a line longer than
    that keeps its end); empty for an empty log."""
    text = (text or "").rstrip("\n")
    if not text or lines <= 0 or chars <= 0:
        return ""
    kept = text.split("\n")[-lines:]
    result = "\n".join(kept)
    if len(result) > chars:
        result = "…" + result[-(chars - 1) :]
    return result
