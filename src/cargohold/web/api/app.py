"""The REST API under /api/v1, shaped after Quay's (docs/api.md says where it differs).
OpenAPI at /api/v1/openapi.json, browsable at /api/v1/docs."""

from __future__ import annotations

from fastapi import FastAPI

from cargohold import __version__
from cargohold.web.api import errors

ROUTER_MODULES = (
    "users",
    "tokens",
    "robots",
    "organizations",
    "teamsync",  # before teams: its /syncing paths are the more specific
    "teams",
    "prototypes",
    "permissions",
    "logs",  # before repositories: /repository/{repository:path}/logs must match first
    "tags",  # before repositories too: /tag/..., /manifest/..., /immutability
    "repositories",
    "applications",
    "superuser",
    "quotas",
    "stars",
    "gc",
)


def make_api() -> FastAPI:
    import importlib

    api = FastAPI(
        title="cargohold API",
        version=__version__,
        description="Users, organizations, teams, robots, tokens, permissions and audit logs.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    errors.install(api)
    for name in ROUTER_MODULES:
        try:
            module = importlib.import_module(f"cargohold.web.api.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cargohold.web.api.{name}":
                raise
            continue  # not written yet
        api.include_router(module.router)
    return api
