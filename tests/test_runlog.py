"""Each run's own log: capture of logging and print, isolation, the limit, redaction, and
the worker's own logging left as it was."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any

import pytest

from orchestrator import runlog
from orchestrator.dispatcher import Attempt, run_task
from orchestrator.models import TaskRun
from orchestrator.notifications.redact import MASK
from tests.utils import make_run, make_scheduled_task

logger = logging.getLogger("tests.runlog")


@pytest.fixture(autouse=True)
def logging_at_info(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a worker started with --loglevel=INFO has it; other tests may have reconfigured logging
    # in this process (a dictConfig disables the loggers that exist at that time).
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(logger, "disabled", False)


def new_log(max_bytes: int = 65536, level: int = logging.INFO, kwargs: Any = None) -> runlog.RunLog:
    return runlog.RunLog(max_bytes, level, kwargs or {})


def test_what_the_function_logs_and_prints_is_captured_in_order() -> None:
    run_log = new_log()
    with runlog.capture(run_log):
        logger.info("first %s", "line")
        print("printed", 2)
        logger.warning("third")
        logger.debug("below the level")
        print("no newline yet", end="")
        sys.stderr.write("to stderr\n")

    lines = run_log.text().splitlines()
    assert [line.split(" ", 2)[-1] for line in lines[:1]] == ["INFO tests.runlog: first line"]
    assert lines[1] == "printed 2"
    assert lines[2].endswith("WARNING tests.runlog: third")
    assert "below the level" not in run_log.text()
    assert "to stderr" in lines[3]
    assert lines[4] == "no newline yet"  # a partial line is kept when the run ends


def test_exceptions_logged_keep_their_traceback() -> None:
    run_log = new_log()
    with runlog.capture(run_log):
        try:
            raise ValueError("bad input")
        except ValueError:
            logger.exception("could not parse")
    text = run_log.text()
    assert "ERROR tests.runlog: could not parse" in text
    assert "Traceback (most recent call last)" in text and "ValueError: bad input" in text


def test_the_level_setting_filters_in_the_handler() -> None:
    run_log = new_log(level=logging.WARNING)
    with runlog.capture(run_log):
        logger.info("info line")
        logger.warning("warning line")
    assert "info line" not in run_log.text()
    assert "warning line" in run_log.text()


def test_nothing_is_captured_outside_a_run() -> None:
    run_log = new_log()
    with runlog.capture(run_log):
        pass
    logger.warning("after the run")
    print("after the run")
    assert run_log.text() == ""


def test_two_runs_in_two_threads_keep_only_their_own_lines() -> None:
    # Each step of one thread waits for the other's: their lines interleave in time.
    barrier = threading.Barrier(2, timeout=10)
    logs: dict[str, str] = {}

    def job(label: str) -> None:
        run_log = new_log()
        with runlog.capture(run_log):
            for number in range(20):
                barrier.wait()
                logging.getLogger(f"tests.{label}").info("%s logged %d", label, number)
                print(f"{label} printed {number}")
        logs[label] = run_log.text()

    threads = [threading.Thread(target=job, args=(label,)) for label in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    for label, other in (("alpha", "beta"), ("beta", "alpha")):
        text = logs[label]
        assert other not in text
        assert text.count(f"{label} logged") == 20
        assert text.count(f"{label} printed") == 20


def test_two_runs_in_two_greenlets_keep_only_their_own_lines() -> None:
    gevent = pytest.importorskip("gevent")  # the gevent pool: one thread, many greenlets
    logs: dict[str, str] = {}

    def job(label: str) -> None:
        run_log = new_log()
        with runlog.capture(run_log):
            for number in range(20):
                gevent.sleep(0)  # hand over to the other greenlet between lines
                logging.getLogger(f"tests.{label}").info("%s logged %d", label, number)
                print(f"{label} printed {number}")
        logs[label] = run_log.text()

    gevent.joinall([gevent.spawn(job, label) for label in ("alpha", "beta")], timeout=30)

    for label, other in (("alpha", "beta"), ("beta", "alpha")):
        assert other not in logs[label]
        assert logs[label].count(f"{label} logged") == 20
        assert logs[label].count(f"{label} printed") == 20


def test_a_chatty_run_keeps_its_last_bytes_after_a_marker() -> None:
    run_log = new_log(max_bytes=1000)
    with runlog.capture(run_log):
        for number in range(500):
            print(f"line {number:04d} " + "é" * 10)  # two bytes each: cuts may split one

    text = run_log.text()
    data = text.encode("utf-8")
    assert len(data) <= 1000
    assert text.startswith("[… ") and "earlier bytes cut …]\n" in text
    assert text.endswith("line 0499 " + "é" * 10 + "\n")
    written = sum(len(f"line {n:04d} {'é' * 10}\n".encode()) for n in range(500))
    marker, kept = text.split("\n", 1)
    cut = int(marker.split(" ")[1].replace(",", ""))
    # The count is exact, give or take the bytes of one character the cut split.
    assert written - len(kept.encode()) - 1 <= cut <= written - len(kept.encode())


def test_memory_stays_bounded_while_a_run_writes() -> None:
    run_log = new_log(max_bytes=2000)
    with runlog.capture(run_log):
        for number in range(10_000):
            logger.info("line %d", number)
            assert run_log._size <= 2000 + 200  # the limit plus the line being written
    assert "line 9999" in run_log.text()


def test_one_huge_print_is_cut_as_it_arrives() -> None:
    run_log = new_log(max_bytes=100)
    with runlog.capture(run_log):
        sys.stdout.write("x" * 5000)  # no newline: kept as it stands once past the limit
        assert run_log._size <= 100
    text = run_log.text()
    assert len(text.encode()) <= 100 and text.endswith("xxx")


def test_secrets_are_masked_before_anything_is_cut() -> None:
    secret = "s3cr3t-value-4c1b9e"
    run_log = new_log(
        kwargs={"report": "daily", "api_token": secret, "nested": {"password": 123456}}
    )
    with runlog.capture(run_log):
        logger.warning("calling with %s", secret)
        print("token in pieces:", secret[:6], end="")
        print(secret[6:])
        print("slack says xoxb-1234-abcdefghijkl and the pin is 123456")
        print("daily is no secret")

    text = run_log.text()
    assert secret not in text and secret[6:] not in text
    assert "xoxb-1234" not in text and "123456" not in text
    assert text.count(MASK) >= 3
    assert "daily is no secret" in text


def test_the_worker_s_own_logging_is_unchanged() -> None:
    # A handler of the worker's own on the root logger: it sees every record, as before.
    stream = io.StringIO()
    worker_handler = logging.StreamHandler(stream)
    worker_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(worker_handler)
    levels = {name: logging.getLogger(name).level for name in ("", "tests", "tests.runlog")}
    try:
        run_log = new_log()
        with runlog.capture(run_log):
            logger.info("inside")
            logger.debug("debug inside")
        logger.info("outside")
    finally:
        root.removeHandler(worker_handler)

    assert stream.getvalue() == "INFO tests.runlog inside\nINFO tests.runlog outside\n"
    assert {name: logging.getLogger(name).level for name in levels} == levels


def test_printed_text_still_reaches_the_stream(capsys: pytest.CaptureFixture[str]) -> None:
    run_log = new_log()
    with runlog.capture(run_log):
        print("to the console as well")
    assert "to the console as well" in capsys.readouterr().out
    assert run_log.text() == "to the console as well\n"


def test_a_stream_that_logs_what_is_written_is_captured_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery's worker replaces sys.stdout with a proxy that logs each write (celery.redirected).
    class LoggingStream:
        def write(self, text: str) -> int:
            if text.strip():
                logging.getLogger("celery.redirected").warning(text.strip())
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", LoggingStream())
    run_log = new_log()
    with runlog.capture(run_log):
        print("hello from the task")
    assert run_log.text() == "hello from the task\n"


def test_python_s_last_resort_output_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no handler of its own on the way up, Python prints WARNING and above itself; our
    # handler must not silence that.
    printed: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            printed.append(record.getMessage())

    monkeypatch.setattr(logging, "lastResort", Recorder(logging.WARNING))
    lonely = logging.getLogger("tests.runlog.lonely")
    monkeypatch.setattr(lonely, "propagate", False)
    handler = runlog.RunLogHandler()
    lonely.addHandler(handler)
    try:
        lonely.warning("nobody else listens")
        lonely.info("below the last resort's level")
    finally:
        lonely.removeHandler(handler)
    assert printed == ["nobody else listens"]


def test_a_limit_of_zero_keeps_no_log() -> None:
    run_log = new_log(max_bytes=0)
    with runlog.capture(run_log):
        logger.warning("not kept")
        print("not kept")
    assert run_log.text() == ""


def test_nul_characters_and_lone_surrogates_are_stored_safely() -> None:
    run_log = new_log()
    with runlog.capture(run_log):
        print("nul \x00 and \udcff")
    text = run_log.text()
    assert "\x00" not in text
    text.encode("utf-8")  # no lone surrogate left


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("one\ntwo\n", "one\ntwo"),
        (
            "\n".join(f"line {n}" for n in range(30)) + "\n",
            "\n".join(f"line {n}" for n in range(10, 30)),
        ),
        ("x" * 2000, "…" + "x" * 1499),
    ],
)
def test_the_tail_for_alerts_is_the_last_lines_within_a_size(text: str, expected: str) -> None:
    assert runlog.tail(text) == expected


# --- through the dispatcher ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_successful_run_stores_its_log(settings: Any) -> None:
    task = make_scheduled_task("chatty", "tests.sample_tasks.chatty", kwargs={"lines": 2})
    run_task(Attempt(task.pk))
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.SUCCEEDED
    assert "INFO tests.sample_tasks.chatty: job logged line 1" in run.log
    assert "job printed line 1\n" in run.log
    assert "debug line" not in run.log


@pytest.mark.django_db
def test_a_failed_run_stores_its_log_with_the_secret_masked(settings: Any) -> None:
    secret = "tok-8f2e5d6c4b3a"
    task = make_scheduled_task(
        "chatty",
        "tests.sample_tasks.chatty",
        kwargs={"lines": 1, "fail": True, "token": secret},
        max_retries=0,
    )
    run_task(Attempt(task.pk))
    run = TaskRun.objects.get()
    assert run.status == TaskRun.Status.FAILED
    assert "WARNING tests.billing: calling the API with token ********" in run.log
    assert secret not in run.log
    # The dispatcher's own lines about the failure are the worker's, not the function's.
    assert "failed for good" not in run.log


@pytest.mark.django_db
def test_the_level_and_limit_come_from_the_settings(settings: Any) -> None:
    settings.ORCHESTRATOR = {
        **settings.ORCHESTRATOR,
        "RUN_LOG_LEVEL": "WARNING",
        "RUN_LOG_MAX_BYTES": 300,
    }
    task = make_scheduled_task("chatty", "tests.sample_tasks.chatty", kwargs={"lines": 50})
    run_task(Attempt(task.pk))
    run = TaskRun.objects.get()
    assert "logged line" not in run.log  # INFO, below WARNING
    assert run.log.startswith("[… ") and run.log.endswith("job printed line 49\n")
    assert len(run.log.encode()) <= 300


@pytest.mark.django_db(transaction=True)
@pytest.mark.django_db(transaction=True)
def test_a_chatty_successful_attempt_costs_what_a_quiet_one_does() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from orchestrator.redaction import known_secrets
    from tests.test_dispatcher import success_statements, verbs

    task = make_scheduled_task("chatty", "tests.sample_tasks.chatty", kwargs={"lines": 5})
    make_run(task, status=TaskRun.Status.SUCCEEDED)
    # The channel secrets that the log is masked with are read once a minute per process, as in
    # a worker that has run anything before this attempt.
    known_secrets()
    with CaptureQueriesContext(connection) as queries:
        outcome = run_task(Attempt(task.pk))
    assert verbs(queries) == success_statements()  # the log rides in the outcome's update
    assert outcome.run is not None
    assert "job printed line 4" in TaskRun.objects.get(pk=outcome.run.pk).log
