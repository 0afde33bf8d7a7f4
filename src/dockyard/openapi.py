"""The API's documentation as the server serves it: the OpenAPI document (`/openapi.json`) and its two browsers,
Swagger UI (`/docs`) and ReDoc (`/redoc`).

The browsers' scripts and styles are served by the server itself, from the `fastapi-offline` package's copies of
`swagger-ui-dist` and `redoc`, never from a CDN: a self-hosted GPU cloud often runs where nothing outside
reaches, and FastAPI's default pages are blank there.

The document is FastAPI's, with what FastAPI cannot see added:

- the credentials each route takes, as security schemes (so Swagger UI's Authorize fills `Authorization`): an
  organization's API key, the operator's admin token (or an admin key), a worker's own key for the webhooks, and
  the metrics token. Which route takes which is decided by its path prefix, the same families docs/api.md lists;
- the sync gateway's route, `/{endpoint_id}/{path}`, which `serving/front.py` sends to the gateway before
  FastAPI's routing, so FastAPI has no route for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
"""Where the browsers' scripts and styles are served; a fixed word, so the front never takes it for an endpoint."""
ASSETS_PACKAGE = ("fastapi_offline", "static")

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An organization's API key (`dockyard admin create-key --org NAME` prints one). Sent as "
        "`Authorization: Bearer <key>`; the bare key, as the PPIO and RunPod clients send it, is taken too.",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The operator's `DOCKYARD_ADMIN_TOKEN` (set at server start), or an admin organization's "
        "API key. Opens `/admin/v1` and `/metrics`.",
    },
    "workerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An async worker's own key (`dyw_...`), which Dockyard injects into that worker's "
        "environment for the SDKs; it opens that worker's webhooks and nothing else.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`DOCKYARD_METRICS_TOKEN`, for Prometheus: it reads `/metrics` and nothing else.",
    },
}

_NO_KEY: list[dict[str, list[str]]] = []
# First match wins; every other path takes an organization's API key.
_SECURITY_BY_PREFIX: tuple[tuple[str, list[dict[str, list[str]]]], ...] = (
    ("/healthz", _NO_KEY),
    ("/metrics", [{"metricsToken": []}, {"adminToken": []}]),
    ("/admin/", [{"adminToken": []}]),
    ("/gpus/v2/workers/", [{"workerKey": []}]),
)
_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]

GATEWAY_PATH = "/{endpoint_id}/{path}"
GATEWAY_METHODS = ("get", "post", "put", "patch", "delete")
_GATEWAY_DESCRIPTION = """A sync endpoint's URL (`url` in its GET): the request, any method, path, query, headers and
body, is proxied to a ready worker of the endpoint, and the worker's answer streams back as it comes. `path` may
hold slashes (`v1/chat/completions`); it is the path the worker sees. While no worker is ready (scaling from zero,
or every worker at `max_concurrent_per_worker`) the request waits in the endpoint's queue up to its
`request_timeout`. The gateway serves this route in front of the rest of the API (`dockyard endpoints invoke
ENDPOINT_ID PATH` calls it from the CLI). An endpoint that is not yours, or none, is 404 with a key and 401
without."""
_GATEWAY_ERRORS = {
    "401": "missing or invalid API key",
    "404": "no endpoint of that id in your organization (`dockyard endpoints list` lists yours)",
    "429": "the endpoint's queue is full; retry after `Retry-After` seconds",
    "502": "the worker could not be reached before its answer began",
    "503": "the endpoint cannot take requests now; the message says why and what to do",
    "504": "no worker answered within the endpoint's `request_timeout`",
}


def install_docs(app: FastAPI) -> None:
    """Serve `/openapi.json` (built by `document`), `/docs` and `/redoc` on `app`, their assets from the package.
    `app` must have been made with `docs_url=None` and `redoc_url=None`, FastAPI's CDN pages."""
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=None,  # every scheme is a bearer token: no OAuth2 flow comes back to a page
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes, with the security schemes and the gateway's route; built once."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        spec["paths"][GATEWAY_PATH] = _gateway_path()
        components = spec.setdefault("components", {})
        components["securitySchemes"] = SECURITY_SCHEMES
        for path, item in spec["paths"].items():
            security = next((rule for prefix, rule in _SECURITY_BY_PREFIX if path.startswith(prefix)), _API_KEY)
            for operation in item.values():
                operation["security"] = security
        app.openapi_schema = spec
    return app.openapi_schema


def _gateway_path() -> dict[str, Any]:
    parameters = [
        {
            "name": "endpoint_id",
            "in": "path",
            "required": True,
            "description": "the endpoint's id",
            "schema": {"type": "string", "format": "uuid"},
        },
        {
            "name": "path",
            "in": "path",
            "required": True,
            "description": "the path the worker gets, slashes included",
            "schema": {"type": "string"},
        },
    ]
    # The error body every route answers; the API's routes put its schema in the document (schemas.common).
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    responses: dict[str, Any] = {"200": {"description": "the worker's answer, as it gave it (any status)"}}
    responses.update({code: {"description": text, "content": error} for code, text in _GATEWAY_ERRORS.items()})
    item: dict[str, Any] = {}
    for method in GATEWAY_METHODS:
        operation: dict[str, Any] = {
            "tags": ["gateway (sync endpoints)"],
            "summary": "Call a sync endpoint",
            "description": _GATEWAY_DESCRIPTION,
            "operationId": f"invoke_endpoint_{method}",
            "parameters": parameters,
            "responses": responses,
        }
        if method in ("post", "put", "patch"):
            operation["requestBody"] = {
                "required": False,
                "description": "any body; it reaches the worker as sent",
                "content": {"*/*": {"schema": {}}},
            }
        item[method] = operation
    return item
