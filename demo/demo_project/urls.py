"""Demo URLs: the orchestrator dashboard at the root, the Django admin at /admin/."""

from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
]

# The dashboard ships with orchestrator; checking for the module keeps the admin usable on a
# checkout where orchestrator.urls does not exist (the root then answers 404).
if find_spec("orchestrator.urls") is not None:
    urlpatterns.append(path("", include("orchestrator.urls")))
