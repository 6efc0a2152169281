"""The admin's change lists, safe against filter values no database can compare.

``?scheduled_task=99999999999999999999`` in a list URL is a lookup the admin applies as it is;
SQLite's driver raises OverflowError for a number wider than 64 bits (a 500), and Django's own
range check covers plain integer columns only, not foreign keys, ``__in`` lists or date parts.
Such a filter matches nothing on any database, so the list shows an empty page.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.utils import NotRelationField, get_fields_from_path
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest

from orchestrator.validators import fits_database_integer

# Transforms of a date or time column that compare whole numbers (the date hierarchy uses some).
_DATE_PARTS = frozenset(
    {
        "year",
        "iso_year",
        "quarter",
        "month",
        "week",
        "day",
        "week_day",
        "iso_week_day",
        "hour",
        "minute",
        "second",
    }
)


def compares_integers(model: type[models.Model], lookup: str) -> bool:
    """Whether the list filter ``lookup`` (``scheduled_task``, ``attempt__in``,
    ``started_at__year``...) compares an integer column of ``model`` or of a related model."""
    parts = lookup.split(LOOKUP_SEP)
    for end in range(len(parts), 0, -1):
        try:
            fields = get_fields_from_path(model, LOOKUP_SEP.join(parts[:end]))
        except (FieldDoesNotExist, NotRelationField):
            continue
        if _DATE_PARTS.intersection(parts[end:]):
            return True
        field: Any = fields[-1]
        if field.is_relation:
            field = getattr(field, "target_field", field)
        return isinstance(field, models.IntegerField)
    return False


def out_of_range_filters(model: type[models.Model], params: dict[str, list[str]]) -> list[str]:
    """The filter parameters among ``params`` whose values hold a whole number too large for
    any database (``__in`` values are comma-separated)."""
    return [
        name
        for name, values in params.items()
        if compares_integers(model, name)
        and not all(fits_database_integer(part) for value in values for part in value.split(","))
    ]


class BoundedChangeList(ChangeList):
    """A change list whose filters with a number too large for the database match nothing.

    The offending parameters are taken out before the admin reads them (the date hierarchy
    and the filter sidebar would fail on them too), and the list is empty.
    """

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        too_large = out_of_range_filters(self.model, self.filter_params)
        for name in too_large:
            self.filter_params.pop(name, None)
            self.params.pop(name, None)
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.none() if too_large else queryset


class BoundedChangeListMixin:
    """For a ModelAdmin: use :class:`BoundedChangeList` for this model's list."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return BoundedChangeList
