"""API routes, included by ``orchestrator.urls`` under ``api/``."""

from django.urls import URLPattern, URLResolver, path
from rest_framework.routers import DefaultRouter

from orchestrator.api import views
from orchestrator.api.schema import schema_view

router = DefaultRouter()
router.register("task-definitions", views.TaskDefinitionViewSet, basename="api-task-definition")
router.register("scheduled-tasks", views.ScheduledTaskViewSet, basename="api-scheduled-task")
router.register("runs", views.TaskRunViewSet, basename="api-run")
router.register("channels", views.NotificationChannelViewSet, basename="api-channel")

urlpatterns: list[URLPattern | URLResolver] = [
    path("schema/", schema_view(), name="api-schema"),
    *router.urls,
]
