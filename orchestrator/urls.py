"""URLs of the dashboard and, when Django REST framework is installed, of the JSON API.

Mount them wherever suits the project, such as ``path("ops/", include("orchestrator.urls"))``:
the dashboard is at the root of that prefix and the API under ``api/``.
"""

from django.apps import apps
from django.urls import URLPattern, URLResolver, include, path

from orchestrator.dashboard import views

app_name = "orchestrator"

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.overview, name="dashboard"),
    path("health/", views.health, name="health"),
    path("metrics", views.metrics_view, name="metrics"),
    path("tasks/<int:pk>/", views.task_detail, name="task-detail"),
    path("tasks/<int:pk>/run/", views.run_now, name="task-run"),
    path("tasks/<int:pk>/enable/", views.enable, name="task-enable"),
    path("tasks/<int:pk>/disable/", views.disable, name="task-disable"),
    path("tasks/<int:pk>/pause/", views.pause, name="task-pause"),
    path("tasks/<int:pk>/resume/", views.resume, name="task-resume"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/cancel/", views.cancel_run, name="run-cancel"),
]

# The API is an optional extra (pip install django-orchestrator[api]).
if apps.is_installed("rest_framework"):
    urlpatterns.append(path("api/", include("orchestrator.api.urls")))
