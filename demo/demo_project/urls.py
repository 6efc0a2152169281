"""Demo URLs: the orchestrator dashboard at the root, the Django admin at /admin/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("orchestrator.urls")),
]
