"""MkDocs hooks (``hooks:`` in mkdocs.yml).

The API reference page is rendered from the OpenAPI schema at build time. The schema is the one
the API serves at ``api/schema/`` (drf-spectacular, with the app's own ``SCHEMA_SETTINGS``),
generated in-process for the URLs mounted under ``ops/`` as in the docs' examples.
essentials-openapi, the renderer behind neoteroi-mkdocs' OAD plugin, turns it into Markdown that
replaces the ``[OAD(orchestrator)]`` marker of ``api-reference.md``: the page never drifts from
the code. Django is configured with the least the API needs, so the build needs no database.
"""

from __future__ import annotations

from typing import Any

MARKER = "[OAD(orchestrator)]"
MOUNT = "ops/"

def _configure_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django_celery_beat",
                "auditlog",
                "rest_framework",
                "rest_framework.authtoken",
                "drf_spectacular",
                "orchestrator",
            ],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            ROOT_URLCONF=__name__,
            USE_TZ=True,
            SECRET_KEY="docs-build-only",
        )
    django.setup()


def openapi_schema() -> dict[str, Any]:
    """The schema ``GET /ops/api/schema/?format=json`` answers, as a dict."""
    _configure_django()
    from django.urls import include, path
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.settings import patched_settings

    from orchestrator.api.schema import SCHEMA_SETTINGS

    patterns = [path(MOUNT, include("orchestrator.urls"))]
    with patched_settings(SCHEMA_SETTINGS):
        generator = SchemaGenerator(patterns=patterns)
        return generator.get_schema(request=None, public=True)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from openapidocs.mk.v3 import OpenAPIV3DocumentationHandler

    rendered = OpenAPIV3DocumentationHandler(openapi_schema(), style="MKDOCS").write()
    return markdown.replace(MARKER, rendered)
