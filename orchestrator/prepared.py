"""A queryset compiled to SQL once per process, then run again for each primary key.

Django compiles a queryset's SQL every time it is evaluated. For the dispatcher's load (a task
with two ``select_related`` tables, by primary key) the compilation costs more than the query
itself, and it runs for every task run. :class:`PreparedGet` compiles the queryset once per
database alias and vendor, then executes the same SQL with the new key and builds the model
instances the way Django's own ``ModelIterable`` does (converters, ``from_db``, related
populators), so what comes back is what ``queryset.filter(pk=...).first()`` would give.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler

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
