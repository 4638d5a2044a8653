"""API errors: one JSON shape (Quay's fields) for every 4xx, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise from handlers: becomes {"status", "error_message", "error_type", "title", "detail"}."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def unauthorized(message: str = "authentication required") -> ApiError:
    return ApiError(401, message, "invalid_token")


def forbidden(message: str = "you are not allowed to do this") -> ApiError:
    return ApiError(403, message, "insufficient_scope")


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, message, "not_found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message, "conflict")


def error_body(status: int, message: str, error_type: str) -> JSONResponse:
    body = {
        "status": status,
        "error_message": message,
        "error_type": error_type,
        "title": error_type,
        "detail": message,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="cargohold"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_body(exc.status, exc.message, exc.error_type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_body(400, "; ".join(problems) or "invalid request", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_body(exc.status_code, str(exc.detail), "invalid_request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_body(500, "internal error; see the server log", "internal_error")
