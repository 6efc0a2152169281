"""Authorisation by Django model permissions, as in the admin.

DRF's DjangoModelPermissions lets any authenticated user read; here reading needs the model's view
permission (or its change permission, which the admin treats as implying view), and running a
task needs ``orchestrator.run_scheduledtask``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission, DjangoModelPermissions
from rest_framework.request import Request
from rest_framework.views import APIView

from orchestrator.access import can_view_runs

RUN_PERMISSION = "orchestrator.run_scheduledtask"
CHANGE_PERMISSION = "orchestrator.change_scheduledtask"


class ModelPermissions(DjangoModelPermissions):
    """Model permissions for every method, reads included."""

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Request, view: APIView) -> bool:
        if super().has_permission(request, view):
            return True
        if request.method not in SAFE_METHODS or not request.user.is_authenticated:
            return False
        model = self._queryset(view).model
        meta = model._meta
        return bool(request.user.has_perm(f"{meta.app_label}.change_{meta.model_name}"))


class CanRunScheduledTask(BasePermission):
    """``orchestrator.run_scheduledtask``, the permission the admin action and dashboard use."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user: Any = request.user
        return bool(user and user.is_authenticated and user.has_perm(RUN_PERMISSION))


class CanChangeScheduledTask(BasePermission):
    """``orchestrator.change_scheduledtask``: pausing and resuming, as in the admin."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user: Any = request.user
        return bool(user and user.is_authenticated and user.has_perm(CHANGE_PERMISSION))


class RunPermissions(ModelPermissions):
    """The run history: reading it follows :func:`orchestrator.access.can_view_runs`, the rule
    the dashboard applies to its run history and recent failures."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS:
            return can_view_runs(request.user)
        return super().has_permission(request, view)
