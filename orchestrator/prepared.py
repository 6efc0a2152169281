"""Statements compiled to SQL once per process, then run again with new values.

Django compiles a statement's SQL every time it runs. For the dispatcher's load (a task with
two ``select_related`` tables, by primary key) and for the insert of its history row (29
columns) the compilation costs more than the server takes to run the statement on a kept
connection, and both run for every task run. Each class here compiles once per database alias
and vendor, then executes the same SQL with the new values and does what Django would have done
with the result:

* :class:`PreparedGet`: builds the model instances the way Django's own ``ModelIterable``
  does (converters, ``from_db``, related populators), so what comes back is what
  ``queryset.filter(pk=...).first()`` would give.
* :class:`PreparedInsert`: saves a new instance the way ``Model.save()`` does (each field's
  ``pre_save`` and database preparation, ``pre_save``/``post_save`` signals, the returned
  key), so what comes back is what ``Model.objects.create(...)`` would give.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from django.db import connections, router, transaction
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.signals import post_save, pre_save
from django.db.models.sql.compiler import SQLCompiler, SQLInsertCompiler
from django.db.models.sql.subqueries import InsertQuery

_M = TypeVar("_M", bound=Model)
# A key no table holds, so the compiled query can be told apart from its parameters.
_PLACEHOLDER = -7_340_033


@dataclass
class _Compiled:
    sql: str
    params: tuple[Any, ...]
    key_position: int
    compiler: SQLCompiler
    converters: dict[int, Any]
    init_list: list[str]
    fields_start: int
    fields_end: int
    populators: list[Any]


class PreparedGet(Generic[_M]):
    """``make_queryset().filter(pk=key)``'s single row, without compiling the SQL each time.

    ``make_queryset`` must return a queryset of plain model instances (``select_related`` is
    fine; no ``values()``, annotations or ``prefetch_related``). It is called once per
    database alias and vendor, on first use.
    """

    def __init__(self, make_queryset: Callable[[], QuerySet[_M]]) -> None:
        self._make_queryset = make_queryset
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        self._lock = threading.Lock()

    def get(self, key: int, using: str = "default") -> _M | None:
        compiled = self._compile(using)
        params = list(compiled.params)
        params[compiled.key_position] = key
        with connections[using].cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = cursor.fetchmany(2)
        if not rows:
            return None
        if compiled.converters:
            rows = list(compiled.compiler.apply_converters(rows, compiled.converters))
        row = rows[0]
        model = compiled.compiler.klass_info["model"]
        obj: _M = model.from_db(
            using, compiled.init_list, row[compiled.fields_start : compiled.fields_end]
        )
        for populator in compiled.populators:
            populator.populate(row, obj)
        return obj

    def _compile(self, using: str) -> _Compiled:
        cache_key = (using, connections[using].vendor)
        compiled = self._compiled.get(cache_key)
        if compiled is not None:
            return compiled
        with self._lock:
            queryset = self._make_queryset().filter(pk=_PLACEHOLDER).order_by()
            compiler = queryset.query.get_compiler(using=using)
            sql, params = compiler.as_sql()
            if list(params).count(_PLACEHOLDER) != 1:
                raise ValueError("The key must appear once among the compiled query's parameters")
            klass_info = compiler.klass_info
            assert klass_info is not None  # a model queryset always has one
            select_fields = klass_info["select_fields"]
            start, end = select_fields[0], select_fields[-1] + 1
            compiled = _Compiled(
                sql=sql,
                params=tuple(params),
                key_position=list(params).index(_PLACEHOLDER),
                compiler=compiler,
                converters=compiler.get_converters(
                    [column[0] for column in compiler.select[: compiler.col_count]]
                ),
                init_list=[f[0].target.attname for f in compiler.select[start:end]],
                fields_start=start,
                fields_end=end,
                populators=get_related_populators(klass_info, compiler.select, using),
            )
            self._compiled[cache_key] = compiled
            return compiled


@dataclass
class _CompiledInsert:
    sql: str
    fields: list[Field[Any, Any]]
    compiler: SQLInsertCompiler
    returning_fields: list[Field[Any, Any]]
    converters: dict[int, Any]


class PreparedInsert(Generic[_M]):
    """``model.objects.create(**values)``, without compiling the INSERT each time.

    For a model without parents (multi-table inheritance) whose fields all take a plain ``%s``
    placeholder. Values that are expressions, a primary key given by the caller, and databases
    that cannot return the new key from the INSERT itself (MySQL), go through ``create()``'s
    own path.
    """

    def __init__(self, model: type[_M]) -> None:
        meta = model._meta
        if meta.parents or meta.order_with_respect_to:
            raise ValueError(f"{meta.label} has parents or an order: save it with create()")
        self._model = model
        self._compiled: dict[tuple[str, str], _CompiledInsert] = {}
        self._lock = threading.Lock()

    def create(self, using: str | None = None, **values: Any) -> _M:
        using = using or router.db_for_write(self._model)
        connection = connections[using]
        obj = self._model(**values)
        if (
            not connection.features.can_return_columns_from_insert
            # A key given by the caller is a column the compiled INSERT leaves out.
            or obj.pk is not None
            or any(hasattr(value, "resolve_expression") for value in values.values())
        ):
            obj.save(force_insert=True, using=using)  # what create() does
            return obj
        # save()'s (and bulk_create()'s) own check: an unsaved related object is refused, a
        # saved one gives its key. Private to Django, so not in the type stubs.
        obj._prepare_related_fields_for_save(operation_name="save")  # type: ignore[attr-defined]
        compiled = self._compile(using, obj)
        compiler = compiled.compiler
        pre_save.send(sender=self._model, instance=obj, raw=False, using=using, update_fields=None)
        params = [
            compiler.prepare_value(field, compiler.pre_save_val(field, obj))
            for field in compiled.fields
        ]
        # As save() does: a failed INSERT inside a transaction marks it for rollback.
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            rows = _fetch_returned_rows(connection.ops, cursor, compiler.returning_params)
        if compiled.converters:
            rows = list(compiler.apply_converters(rows, compiled.converters))
        for value, field in zip(rows[0], compiled.returning_fields, strict=True):
            setattr(obj, field.attname, value)
        obj._state.adding = False
        obj._state.db = using
        post_save.send(
            sender=self._model,
            instance=obj,
            created=True,
            update_fields=None,
            raw=False,
            using=using,
        )
        return obj

    def _compile(self, using: str, obj: _M) -> _CompiledInsert:
        cache_key = (using, connections[using].vendor)
        compiled = self._compiled.get(cache_key)
        if compiled is not None:
            return compiled
        with self._lock:
            meta = self._model._meta
            fields = [
                f
                for f in meta.local_concrete_fields
                if not f.generated and f is not meta.auto_field
            ]
            if any(hasattr(f, "get_placeholder") or f.has_db_default() for f in fields):
                raise ValueError(f"{meta.label} has a field with a placeholder or a db_default")
            returning_fields = list(meta.db_returning_fields)
            query = InsertQuery(self._model)
            query.insert_values(fields, [obj])
            compiler = cast(SQLInsertCompiler, query.get_compiler(using=using))
            compiler.returning_fields = returning_fields
            [(sql, params)] = compiler.as_sql()
            if len(params) != len(fields):
                raise ValueError(f"{meta.label}'s INSERT takes a parameter per field")
            compiled = _CompiledInsert(
                sql=sql,
                fields=fields,
                compiler=compiler,
                returning_fields=returning_fields,
                converters=compiler.get_converters(
                    [f.get_col(meta.db_table) for f in returning_fields]
                ),
            )
            self._compiled[cache_key] = compiled
            return compiled


def _fetch_returned_rows(ops: Any, cursor: Any, returning_params: Any) -> list[Any]:
    """The rows (one) an INSERT ... RETURNING gave, as Django's own insert reads them: Django
    6.0 has ``fetch_returned_rows()``, 5.2 ``fetch_returned_insert_columns()`` (one row)."""
    if hasattr(ops, "fetch_returned_rows"):
        return list(ops.fetch_returned_rows(cursor, returning_params))
    return [ops.fetch_returned_insert_columns(cursor, returning_params)]
