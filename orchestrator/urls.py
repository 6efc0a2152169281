"""URLs of the dashboard.

Mount them wherever suits the project, such as ``path("ops/", include("orchestrator.urls"))``:
the dashboard is at the root of that prefix.
"""

from django.urls import URLPattern, URLResolver, path

from orchestrator.dashboard import views

app_name = "orchestrator"

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.overview, name="dashboard"),
    path("tasks/<int:pk>/", views.task_detail, name="task-detail"),
    path("tasks/<int:pk>/run/", views.run_now, name="task-run"),
    path("tasks/<int:pk>/enable/", views.enable, name="task-enable"),
    path("tasks/<int:pk>/disable/", views.disable, name="task-disable"),
]

