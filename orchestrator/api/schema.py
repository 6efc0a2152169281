"""OpenAPI schema of the orchestrator API (drf-spectacular), limited to this app's endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpResponse
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated

SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "Orchestrator API",
    "DESCRIPTION": "Task definitions, scheduled tasks (with Run now), run history and "
    "notification channels. Authenticate with a session or a token "
    "(`Authorization: Token <key>`); access follows Django model permissions.",
    "VERSION": "1",
    "PREPROCESSING_HOOKS": ["orchestrator.api.schema.orchestrator_endpoints"],
}


_UNSET = object()


class ViewSchema(AutoSchema):
    """drf-spectacular's AutoSchema, with per-action overrides read from the view.

    A view sets ``schema_overrides = {"action": {"request": ..., "responses": ...,
    "parameters": [...]}}``. This stands in for ``@extend_schema``, which builds on the project's
    ``DEFAULT_SCHEMA_CLASS`` and so would break in projects that have not pointed it at
    drf-spectacular: the app works whatever the project's DRF settings are.
    """

    def _override(self, key: str) -> Any:
        action = getattr(self.view, "action", None)
        overrides = getattr(self.view, "schema_overrides", {}).get(action, {})
        return overrides.get(key, _UNSET)

    def get_request_serializer(self) -> Any:
        request = self._override("request")
        return super().get_request_serializer() if request is _UNSET else request

    def get_response_serializers(self) -> Any:
        responses = self._override("responses")
        return super().get_response_serializers() if responses is _UNSET else responses

    def get_override_parameters(self) -> list[Any]:
        parameters = self._override("parameters")
        extra = [] if parameters is _UNSET else list(parameters)
        return [*super().get_override_parameters(), *extra]


def orchestrator_endpoints(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """Keep this app's endpoints only: a project's own DRF API has its own schema, and the
    schema view describing itself adds nothing to the API's contract."""
    return [
        endpoint
        for endpoint in endpoints
        if getattr(getattr(endpoint[3], "cls", None), "__module__", "") == "orchestrator.api.views"
    ]


def schema_view() -> Callable[..., HttpResponse]:
    """The schema endpoint: any authenticated user may read it (it holds no data)."""
    from orchestrator.api.views import AUTHENTICATION_CLASSES

    return SpectacularAPIView.as_view(
        custom_settings=SCHEMA_SETTINGS,
        authentication_classes=AUTHENTICATION_CLASSES,
        permission_classes=[IsAuthenticated],
    )
