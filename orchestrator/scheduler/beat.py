"""The Celery beat scheduler class: ``celery beat -S orchestrator.scheduler:Scheduler``.

A drop-in replacement for django-celery-beat's ``DatabaseScheduler``: the same ``PeriodicTask``
rows, the same ``apply_async`` options, ``one_off``, ``start_time``, ``expires``,
``last_run_at`` and ``total_run_count``. What it adds:

* every due entry is sent in the wake-up where it falls due: entries wait in a heap by due time,
  and one pass sends everything due over one producer connection, batching the broker writes;
* ``last_run_at`` and ``total_run_count`` are written with a few statements per wake-up;
* a change reloads the changed rows only (:mod:`orchestrator.scheduler.loader`);
* any number of beat processes can run: the one holding the lease sends, the others keep their
  schedule loaded and take over when the lease expires (:mod:`orchestrator.scheduler.lease`);
* each message of ``orchestrator.run_scheduled_task`` carries its tick as ``scheduled_for``;
* when several ticks of an entry are due at once, the scheduled task's catch-up policy picks
  which to send (:mod:`orchestrator.policies.catch_up`).

Each wake-up (:meth:`Scheduler.tick`) polls the database at most every :attr:`poll_interval`
seconds (the marker, the lease, the heartbeat: two or three queries when nothing changed), sends
what is due if this process leads, writes the run state back, and sleeps until the next due
entry or the next poll.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from celery import beat
from django.db import DatabaseError, InterfaceError, connection
from django.db.models import Subquery

from orchestrator.conf import conf
from orchestrator.models import BeatProcess, ScheduledTask, SchedulerLease
from orchestrator.policies.catch_up import ONE_RUN, CatchUp, CatchUpPolicy
from orchestrator.scheduler import writes
from orchestrator.scheduler.entries import DISPATCH_TASK, Entry
from orchestrator.scheduler.heap import DueHeap
from orchestrator.scheduler.lease import LEASE_NAME, DatabaseNow, Lease, ensure_row
from orchestrator.scheduler.loader import RECONCILE_SECONDS, Changes, ScheduleLoader, marker_query
from orchestrator.scheduler.registry import ProcessRow, forget_old_processes, this_host

logger = logging.getLogger("orchestrator.scheduler")

DEFAULT_MAX_INTERVAL = 5.0
# Warn when this host's clock and the database's differ by more than this (seconds).
CLOCK_SKEW_WARNING = 2.0
_DB_ERRORS = (DatabaseError, InterfaceError)


class Scheduler(beat.Scheduler):
    """Celery beat scheduler serving django-celery-beat's ``PeriodicTask`` rows.

    Start any number of beat processes with it; one sends at a time. ``clock`` (aware UTC now)
    and ``monotonic`` can be injected for tests.
    """

    #: Messages per broker batch; the lease is checked again before each.
    chunk_size = 500
    #: Seconds to wait before publishing again after the broker refused a message.
    retry_after_failure = 1.0
    #: A send pass renews the lease before a chunk once less than this many seconds are left.
    renew_below = 3.0

    def __init__(
        self,
        *args: Any,
        clock: Callable[[], dt.datetime] | None = None,
        monotonic: Callable[[], float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.monotonic = monotonic or time.monotonic
        self.entries: dict[int, Entry] = {}
        self.due = DueHeap[int]()
        self.loader = ScheduleLoader()
        self.stats: Counter[str] = Counter()
        self._pending: list[writes.RunWrite] = []
        self._pending_disable: set[int] = set()
        self._next_poll = float("-inf")
        self._next_reconcile = float("inf")
        self._next_skew_warning = float("-inf")
        self._fresh_state = False
        self._busy = False  # in a wake-up or a sync: talking to the database or the broker
        self._interrupted = False
        hostname, pid = this_host()
        token = secrets.token_hex(8)
        self.lease = Lease(
            token, f"{hostname}:{pid}", conf.SCHEDULER_LEASE_SECONDS, clock=self.monotonic
        )
        self.process = ProcessRow(token, hostname, pid, clock=self.monotonic)
        super().__init__(*args, **kwargs)
        # The longest sleep between wake-ups; celery-types declares the base's attribute an int.
        self.longest_sleep: float = float(
            kwargs.get("max_interval")
            or self.app.conf.beat_max_loop_interval
            or DEFAULT_MAX_INTERVAL
        )
        self.max_interval = self.longest_sleep  # type: ignore[assignment]
        # The lease is renewed at every poll, several times within its lifetime.
        self.poll_interval: float = min(self.longest_sleep, self.lease.seconds / 4)

    # Celery's hooks

    def setup_schedule(self) -> None:
        ensure_row()
        self._install_static_entries()
        self._full_load()
        self.process.beat(BeatProcess.Role.STANDBY, force=True)

    @property
    def schedule(self) -> dict[str, beat.ScheduleEntry]:
        """The entries by name, as Celery ``ScheduleEntry`` objects (a read-only view)."""
        return {entry.name: entry.as_schedule_entry(self.app) for entry in self.entries.values()}

    @schedule.setter
    def schedule(self, value: Any) -> None:
        # Celery's base class assigns its in-memory schedule here; the database is ours.
        pass

    @property
    def info(self) -> str:
        return (
            f"    . orchestrator scheduler: lease {self.lease.seconds:g} s, "
            f"polls every {self.poll_interval:g} s, {self.lease.holder}"
        )

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One wake-up: poll the database if it is time, send what is due, write it back.

        Returns how long to sleep: until the next due entry or the next poll.
        """
        self._busy = True
        try:
            if self.monotonic() >= self._next_poll:
                self._poll()
                self._next_poll = self.monotonic() + self.poll_interval
            if self.lease.leader and self._fresh_state:
                self._send_due()
            self._flush()
        except Exception:
            # Beat must keep ticking (and renewing, or letting the lease go): one bad wake-up
            # is logged and the next one starts afresh.
            logger.exception("orchestrator scheduler: unexpected error in a wake-up")
            self._next_poll = min(self._next_poll, self.monotonic() + self.poll_interval)
        finally:
            self._busy = False
        return self._sleep_time()

    def sync(self) -> None:
        # Beat calls it between wake-ups too (every few minutes): the same care as a wake-up.
        busy, self._busy = self._busy, True
        try:
            self._flush()
        finally:
            self._busy = busy

    def close(self) -> None:
        """Write what is pending, give the lease up, forget this process.

        Beat calls it twice on SIGTERM: from its signal handler, which then raises SystemExit,
        and again on its way out. The handler may interrupt a wake-up or a sync in the middle of
        a statement, while psycopg holds the connection's lock: a statement from the handler
        would wait for that lock for ever (and the supervisor's SIGKILL would leave the lease
        to expire). So an interrupted one closes nothing in the handler; the second call does
        it, on a new connection, as the interrupted one may be half-way through a reply.
        """
        if self._busy:
            self._interrupted = True
            return
        if self._interrupted and not connection.in_atomic_block:  # a test's transaction stays
            with contextlib.suppress(DatabaseError, InterfaceError):
                connection.close()
        try:
            super().close()  # sync(), then the broker connection is released
        finally:
            if self.lease.leader:
                self.lease.release()
                logger.info("orchestrator scheduler: released the lease")
            self.process.forget()

    # Loading and following changes

    def _install_static_entries(self) -> None:
        """Write ``beat_schedule`` entries (and Celery's backend cleanup) as rows, as
        django-celery-beat's DatabaseScheduler does."""
        from django_celery_beat.schedulers import ModelEntry

        entries: dict[str, Any] = {}
        if self.app.conf.result_expires:
            from celery.schedules import crontab

            entries["celery.backend_cleanup"] = {
                "task": "celery.backend_cleanup",
                "schedule": crontab("0", "4", "*"),
                "options": {"expire_seconds": 12 * 3600},
            }
        entries.update(self.app.conf.beat_schedule or {})
        for name, fields in entries.items():
            try:
                ModelEntry.from_entry(name, app=self.app, **fields)
            except Exception:  # one bad entry must not stop beat, as in DatabaseScheduler
                logger.exception("Cannot add entry %r to the database schedule", name)

    def _poll_row(self) -> tuple[dt.datetime, dt.datetime | None] | None:
        return (
            SchedulerLease.objects.filter(name=LEASE_NAME)
            .annotate(db_now=DatabaseNow(), marker=Subquery(marker_query()))
            .values_list("db_now", "marker")
            .first()
        )

    def _full_load(self) -> None:
        started = time.perf_counter()
        row = self._poll_row()
        db_now, marker = row if row is not None else (None, None)
        entries = self.loader.load_all(db_now, marker)
        self.entries = {entry.pk: entry for entry in entries}
        self._rebuild_heap()
        self.stats["full_loads"] += 1
        self._next_reconcile = self.monotonic() + RECONCILE_SECONDS
        logger.info(
            "orchestrator scheduler: loaded %d entries (full load, %.2f s)",
            len(self.entries),
            time.perf_counter() - started,
        )

    def _rebuild_heap(self) -> None:
        self.due.clear()
        for entry in self.entries.values():
            self._schedule(entry)

    def _schedule(self, entry: Entry, at: dt.datetime | None = None) -> None:
        due = at or entry.next_due()
        if due is None:
            self.due.discard(entry.pk)
        else:
            self.due.push(entry.pk, due.timestamp())

    def _poll(self) -> None:
        try:
            row = self._poll_row()
            if row is None:
                ensure_row()
                row = self._poll_row()
            db_now, marker = row  # type: ignore[misc]
            self._check_clock(db_now)
            changes = self.loader.changes(db_now, marker)
            if changes:
                self._apply(changes, "schedule changed")
            was_leader = self.lease.leader
            leader = self.lease.step()
            if leader and not was_leader:
                self._on_elected()
            elif was_leader and not leader:
                self._fresh_state = False
                logger.warning("orchestrator scheduler: lost the lease; now a standby")
            if self.monotonic() >= self._next_reconcile and self._quiet_for(1.0):
                self._reconcile()
            role = BeatProcess.Role.LEADER if self.lease.leader else BeatProcess.Role.STANDBY
            self.process.beat(role)
        except _DB_ERRORS as err:
            self._database_error("polling the schedule", err)
            if self.lease.leader and not self.lease.may_send():
                self.lease.leader = False
                self._fresh_state = False

    def _database_error(self, what: str, err: Exception) -> None:
        logger.error("orchestrator scheduler: database error while %s: %s", what, err)
        # A dead connection is only replaced once closed; the next wake-up opens a new one.
        with contextlib.suppress(Exception):
            connection.close()

    def _check_clock(self, db_now: dt.datetime | None) -> None:
        if db_now is None:
            return
        if db_now.tzinfo is None:
            db_now = db_now.replace(tzinfo=dt.UTC)
        skew = (self.clock() - db_now).total_seconds()
        if abs(skew) > CLOCK_SKEW_WARNING and self.monotonic() >= self._next_skew_warning:
            self._next_skew_warning = self.monotonic() + 600
            logger.warning(
                "orchestrator scheduler: this host's clock is %.1f s %s the database's; ticks "
                "are sent by this host's clock (keep it in step with NTP)",
                abs(skew),
                "ahead of" if skew > 0 else "behind",
            )

    def _apply(self, changes: Changes, why: str) -> None:
        """Rebuild the entries of changed rows, drop removed ones, load newly enabled ones."""
        reloaded = removed = 0
        seen: set[int] = set()
        for row in changes.rows:
            seen.add(row.pk)
            reloaded += self._upsert(row)
        for pk in changes.removed:
            removed += self._remove(pk)
        if changes.enabled_ids is not None:
            for pk in set(self.entries) - changes.enabled_ids:
                removed += self._remove(pk)
            missing = changes.enabled_ids - set(self.entries) - seen
            for row in self.loader.rows_by_id(missing):
                if row.enabled:
                    reloaded += self._upsert(row)
        self.stats["rows_read"] += len(changes.rows)
        if reloaded or removed:
            self.stats["partial_reloads"] += 1
            self.stats["entries_reloaded"] += reloaded
            logger.info(
                "orchestrator scheduler: %s: reloaded %d entries, removed %d (%d rows read, "
                "%d entries held)",
                why,
                reloaded,
                removed,
                len(changes.rows),
                len(self.entries),
            )

    def _upsert(self, row: Any) -> int:
        """Take a (re)read enabled row; return 1 if its entry was built anew."""
        old = self.entries.get(row.pk)
        entry = self.loader.build_one(row)
        if entry is None:
            self._remove(row.pk)
            return 0
        if old is not None and old.fingerprint == entry.fingerprint:
            old.row_hash = entry.row_hash
            return 0
        if old is not None:
            # What this process sent may not be written yet: never go back before it.
            if entry.last_run_at is not None and old.last_run_at is not None:
                entry.last_run_at = max(entry.last_run_at, old.last_run_at)
            entry.total_run_count = max(entry.total_run_count, old.total_run_count)
        logger.debug("orchestrator scheduler: entry %s (re)loaded", entry.name)
        self.entries[entry.pk] = entry
        self._schedule(entry)
        return 1

    def _remove(self, pk: int) -> int:
        entry = self.entries.pop(pk, None)
        self.due.discard(pk)
        if entry is not None:
            logger.debug("orchestrator scheduler: entry %s removed", entry.name)
        return int(entry is not None)

    def _reconcile(self) -> None:
        """Compare every enabled row's hash with the entry's; re-read the ones that differ."""
        self._next_reconcile = self.monotonic() + RECONCILE_SECONDS
        hashes = self.loader.hashes()
        differ = {
            pk
            for pk, value in hashes.items()
            if getattr(self.entries.get(pk), "row_hash", None) != value
        }
        gone = set(self.entries) - set(hashes)
        self.stats["reconciles"] += 1
        if differ or gone:
            self._apply(
                Changes(rows=self.loader.rows_by_id(differ), removed=gone), "reconciliation"
            )
        if self.lease.leader:
            forget_old_processes()

    def _on_elected(self) -> None:
        """This process just took the lease: write what is pending, then read the run state
        fresh (another leader may have sent since this process last looked)."""
        self.lease.read_term()
        self._flush()
        if self._pending or self._pending_disable:
            # Sending before they are written could send their ticks again: wait for a poll.
            self.lease.leader = False
            return
        state = self.loader.run_state()
        for pk in list(self.entries):
            found = state.get(pk)
            if found is None:
                self._remove(pk)
                continue
            last_run_at, count, date_changed = found
            entry = self.entries[pk]
            if last_run_at is None or entry.last_run_at is None:
                entry.last_run_at = last_run_at
            else:
                entry.last_run_at = max(last_run_at, entry.last_run_at)
            entry.total_run_count = max(count, entry.total_run_count)
            entry.date_changed = date_changed
        self._rebuild_heap()
        self._fresh_state = True
        try:
            # Connect to the broker now rather than at the first due tick, which it would delay.
            self.producer  # noqa: B018
        except Exception as err:
            logger.warning("orchestrator scheduler: cannot reach the broker yet: %s", err)
        logger.info(
            "orchestrator scheduler: %s took the lease (term %s) and sends %d entries",
            self.lease.holder,
            self.lease.term,
            len(self.entries),
        )

    # Sending

    def _quiet_for(self, seconds: float) -> bool:
        """Whether nothing is due within ``seconds`` (so slower work can run now)."""
        if not self.lease.leader:
            return True
        nxt = self.due.peek()
        return nxt is None or nxt - self.clock().timestamp() > seconds

    def _send_due(self) -> None:
        now = self.clock()
        keys = self.due.pop_due(now.timestamp())
        if not keys:
            return
        started = time.perf_counter()
        plans = self._plan(keys, now)
        sends = sorted(
            (
                (tick, order, entry)
                for order, (entry, ticks, _) in enumerate(plans)
                for tick in ticks
            ),
            key=lambda item: (item[0], item[1]),
        )
        sent: Counter[int] = Counter()
        failed = self._publish(sends, sent)
        self._advance(plans, sent, failed, now)
        if sends:
            self.stats["sent"] += sum(sent.values())
            logger.info(
                "orchestrator scheduler: sent %d of %d due messages in %.3f s",
                sum(sent.values()),
                len(sends),
                time.perf_counter() - started,
            )

    def _plan(
        self, keys: Iterable[int], now: dt.datetime
    ) -> list[tuple[Entry, list[dt.datetime], dt.datetime | None]]:
        """For each due entry: the ticks to send and the tick it moves on to."""
        due: list[tuple[Entry, list[dt.datetime]]] = []
        for pk in keys:
            entry = self.entries.get(pk)
            if entry is None:
                continue
            if entry.is_expired(now):
                # As django-celery-beat does: an entry past its expiry is disabled, not sent.
                self._pending_disable.add(pk)
                self._remove(pk)
                continue
            ticks = entry.timing.due(entry.base(), now, 2)
            if entry.expires is not None:
                ticks = [tick for tick in ticks if tick < entry.expires]
            due.append((entry, ticks))
        policies = self._policies(entry.scheduled_task_id for entry, ticks in due if len(ticks) > 1)
        plans: list[tuple[Entry, list[dt.datetime], dt.datetime | None]] = []
        for entry, ticks in due:
            if not ticks:
                plans.append((entry, [], None))
                continue
            policy = ONE_RUN
            if entry.scheduled_task_id is not None:
                policy = policies.get(entry.scheduled_task_id, CatchUpPolicy())
            if len(ticks) > 1 and policy.keep > 2:
                ticks = entry.timing.due(entry.base(), now, policy.keep)
                if entry.expires is not None:
                    ticks = [tick for tick in ticks if tick < entry.expires]
            chosen = policy.select(ticks)
            if len(ticks) > 1:
                self.stats["catch_ups"] += 1
                logger.info(
                    "orchestrator scheduler: %s had %s ticks due at once (last %s); catch-up %s "
                    "sends %d",
                    entry.name,
                    len(ticks)
                    if len(ticks) < policy.keep or policy.kind is not CatchUp.ALL
                    else f"{len(ticks)} or more",
                    ticks[-1].isoformat(),
                    policy.kind,
                    len(chosen),
                )
            plans.append((entry, chosen, ticks[-1]))
        return plans

    def _policies(self, ids: Iterable[int | None]) -> dict[int, CatchUpPolicy]:
        """The catch-up policies of these scheduled tasks, read now (one query)."""
        wanted = sorted({pk for pk in ids if pk is not None})
        if not wanted:
            return {}
        policies = {}
        rows = ScheduledTask.objects.filter(pk__in=wanted).values_list(
            "pk", "catch_up", "catch_up_limit"
        )
        for pk, kind, limit in rows:
            try:
                policies[pk] = CatchUpPolicy(CatchUp(kind), max(1, limit or 1))
            except ValueError:  # a row edited around validation: the default policy
                policies[pk] = CatchUpPolicy()
        return policies

    def _publish(self, sends: list[tuple[dt.datetime, int, Entry]], sent: Counter[int]) -> set[int]:
        """Publish in chunks over one producer; return the entries whose sends failed.

        Sends after a failure, or once the lease may have expired, are left for the next
        wake-up (their entries count as failed: they do not move on).
        """
        failed: set[int] = set()
        if not sends:
            return failed
        producer = self.producer
        batch = getattr(producer, "batch", None)
        batched = batch is not None and getattr(producer, "supports_batch_publish", False)
        for start in range(0, len(sends), self.chunk_size):
            chunk = sends[start : start + self.chunk_size]
            self._renew_if_short()
            if not self.lease.may_send():
                logger.warning(
                    "orchestrator scheduler: the lease may have expired; %d messages left for "
                    "the leader",
                    len(sends) - start,
                )
                failed.update(entry.pk for _, _, entry in sends[start:])
                self.stats["fenced"] += len(sends) - start
                break
            done: list[int] = []
            try:
                context = (
                    batch(len(chunk) * 2)
                    if batch is not None and batched
                    else contextlib.nullcontext()
                )
                with context:
                    for tick, _, entry in chunk:
                        self._send(entry, tick, producer)
                        done.append(entry.pk)
            except Exception as err:
                # A failed batch may have been written in part: nothing in it counts as sent
                # (a second copy of an orchestrator run is dropped by the tick guard).
                certain = [] if batched else done
                for pk in certain:
                    sent[pk] += 1
                failed.update(entry.pk for _, _, entry in sends[start:])
                failed.difference_update(certain)
                self.stats["publish_errors"] += 1
                logger.error(
                    "orchestrator scheduler: could not publish (%s); %d messages wait for the "
                    "next wake-up",
                    err,
                    len(sends) - start - len(certain),
                )
                self._reset_producer()
                break
            for pk in done:
                sent[pk] += 1
        return failed

    def _renew_if_short(self) -> None:
        """Renew the lease before a chunk when little of it is left (a long pass, a late poll).

        A leader that stalled past its lease renews only if nobody took it meanwhile; otherwise
        it stops here, with the rest of the pass left to the new leader.
        """
        if not self.lease.leader or self.lease.remaining() >= self.renew_below:
            return
        try:
            leader = self.lease.step()
        except _DB_ERRORS as err:  # step() handles its own errors; this is belt and braces
            self._database_error("renewing the lease", err)
            leader = False
        if not leader:
            self._fresh_state = False
            logger.warning("orchestrator scheduler: lost the lease during a send pass")

    def _send(self, entry: Entry, tick: dt.datetime, producer: Any) -> None:
        kwargs = entry.kwargs
        if entry.task == DISPATCH_TASK:
            # The tick this message belongs to: the dispatcher places the run by it, not by the
            # worker's clock, and a second copy of the same tick is dropped.
            kwargs = {**kwargs, "scheduled_for": tick.isoformat()}
        options = dict(entry.options)
        options["headers"] = {**entry.headers, "celery_beat_task": True}
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        task = self.app.tasks.get(entry.task)
        if task is not None:
            task.apply_async(tuple(entry.args), kwargs, producer=producer, **options)
        else:
            self.app.send_task(entry.task, entry.args, kwargs, producer=producer, **options)

    def _reset_producer(self) -> None:
        self.__dict__.pop("producer", None)
        conn = self.__dict__.pop("connection", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()

    def _advance(
        self,
        plans: list[tuple[Entry, list[dt.datetime], dt.datetime | None]],
        sent: Counter[int],
        failed: set[int],
        now: dt.datetime,
    ) -> None:
        retry_at = now + dt.timedelta(seconds=self.retry_after_failure)
        for entry, ticks, latest in plans:
            if latest is None:  # due by the heap, no tick yet (start_time, rounding)
                self._schedule(entry)
                continue
            count = sent[entry.pk]
            if entry.pk in failed:
                if count == 0:
                    self._schedule(entry, retry_at)
                    continue
                latest = ticks[count - 1]  # sent in order: the ones before the failure went
            entry.last_run_at = latest
            entry.total_run_count += count
            self._pending.append(writes.RunWrite(entry.pk, latest, count))
            if entry.one_off and count:
                self._pending_disable.add(entry.pk)
                self._remove(entry.pk)
            elif entry.pk in failed:
                self._schedule(entry, retry_at)
            else:
                self._schedule(entry)

    def _flush(self) -> None:
        if not self._pending and not self._pending_disable:
            return
        try:
            if self._pending:
                self.stats["write_statements"] += writes.write_runs(self._pending)
                self._pending = []
            if self._pending_disable:
                writes.disable(self._pending_disable)
                self._pending_disable = set()
        except _DB_ERRORS as err:
            self._database_error("writing last_run_at", err)

    def _sleep_time(self) -> float:
        until_poll = self._next_poll - self.monotonic()
        wait = min(until_poll, self.longest_sleep)
        if self.lease.leader and self._fresh_state:
            nxt = self.due.peek()
            if nxt is not None:
                wait = min(wait, nxt - self.clock().timestamp())
        return max(0.0, wait)
