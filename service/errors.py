"""Errors a client can cause, and how every endpoint turns them into 4xx JSON.

BentoML answers an exception raised by an API method with 500 (or, for its own exceptions,
with a body wrapped in a list), so API methods wrap their body in `answers_errors`, which
returns `{"error": message, "field": name}` with the right status instead (BentoML's own 4xx
answers are put in this shape by `service/openapi.py`). Anything not listed here is a bug and
stays a 500 (logged by BentoML).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.responses import JSONResponse

from service.core.pipeline import (
    DistractorUnusable,
    LabellerMissing,
    SelectionMissing,
    SizeUnsupported,
)
from service.core.repository import ModelNotFound, ModelUnreadable

F = TypeVar("F", bound=Callable[..., Any])


class RequestError(ValueError):
    """A bad request: `status` is the HTTP status, `field` the request field at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


class Conflict(RequestError):
    """The request is valid but the state of a model or job does not allow it (409)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, field, status=409)


class NotFound(RequestError):
    """No such SKU, version or job (404)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message, field, status=404)


def error_body(message: str, field: str | None) -> dict[str, Any]:
    return {"error": message, "field": field}


def error_response(exc: Exception) -> JSONResponse:
    """The JSON answer for a client error."""
    if isinstance(exc, RequestError):
        return JSONResponse(error_body(exc.message, exc.field), status_code=exc.status)
    if isinstance(exc, LabellerMissing):
        return JSONResponse(error_body(str(exc), None), status_code=503)
    if isinstance(exc, ModelUnreadable):
        return JSONResponse(error_body(str(exc), "sku"), status_code=503)
    if isinstance(exc, SelectionMissing):
        return JSONResponse(error_body(str(exc), "select"), status_code=409)
    if isinstance(exc, DistractorUnusable):
        return JSONResponse(error_body(str(exc), "distractors"),
                            status_code=404 if exc.missing else 422)
    if isinstance(exc, SizeUnsupported):
        return JSONResponse(error_body(str(exc), "size"), status_code=422)
    if isinstance(exc, ModelNotFound):
        field = "version" if "has no version" in str(exc) else "sku"
        return JSONResponse(error_body(str(exc), field), status_code=404)
    return JSONResponse(error_body(str(exc), None), status_code=422)  # ValueError


# Not all are the client's fault: a missing labeller or an unreadable model is the server's
# state (503), but each still gets a JSON answer that says what is wrong.
CLIENT_ERRORS = (RequestError, ModelNotFound, ModelUnreadable, LabellerMissing,
                 SelectionMissing, ValueError)


def answers_errors(func: F) -> F:
    """Return client errors raised by `func` as 4xx JSON responses.

    When the method takes BentoML's `ctx`, its response status is also set, because BentoML
    copies `ctx.response.status_code` onto whatever the method returns.
    """
    ctx_name = next(
        (p for p in inspect.signature(func).parameters if p in ("ctx", "context")), None
    )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CLIENT_ERRORS as exc:
            response = error_response(exc)
            if ctx_name is not None and kwargs.get(ctx_name) is not None:
                kwargs[ctx_name].response.status_code = response.status_code
            return response

    return wrapper  # type: ignore[return-value]
