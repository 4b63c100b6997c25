"""The OpenAPI documents tell the truth: one shape for every error, declared where it occurs.

Our API methods and middlewares answer errors as `{"error", "field"}` (`service/errors.py`).
BentoML answers two kinds itself, in other shapes: a body that fails validation gets a 400
`{"error": "1 validation error for ...", "detail": [pydantic errors]}`, and its own exceptions'
bodies come wrapped in a list. Its generated `/docs.json` declares for each API method only
400, 404 and 500, with `detail` a string (so its own validation answers contradict it);
`@bentoml.api` takes no `responses=` to declare more; and it flattens each top-level
`X | None` field to `X`, so `/generate`'s `"seed": null` contradicts the document too. Hence:

- `BentoErrorsMiddleware` rewrites BentoML's 4xx answers of /generate and /finetune into
  `{"error", "field"}` (field: the first invalid field, e.g. "n" or "images[0]").
- `OpenApiMiddleware` serves `/docs.json` with `/generate`'s request and answer schemas as
  pydantic writes them (nulls kept) and the statuses each API method answers (`API_ERRORS`)
  declared with the `ErrorBody` schema. The FastAPI job routes declare theirs with
  `responses=` (`error_responses`), which both documents carry.

`tests/reliability/test_fuzz.py` checks both documents against a live server (Schemathesis).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from service.errors import error_body
from service.schemas import ErrorBody, GenerateRequest, GenerateResponse
from service.security import (
    GENERATE_PATH,
    UPLOAD_PATH,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
)

DOCS_PATH = "/docs.json"
REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF_TEMPLATE.format(model="ErrorBody")}
# The JSON bodies of BentoML API methods whose schemas BentoML's flattening gets wrong.
JSON_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    GENERATE_PATH: (GenerateRequest, GenerateResponse),
}
UNAUTHORIZED = "Missing or wrong API key (when the server has one)."
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer"}}}


def declared(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response object answering an `ErrorBody`."""
    response = {"description": description,
                "content": {"application/json": {"schema": ERROR_REF}}}
    return {**response, "headers": headers} if headers else response


# What each BentoML API method answers besides 200 and BentoML's own 500.
API_ERRORS: dict[str, dict[int, dict[str, Any]]] = {
    GENERATE_PATH: {
        400: declared("A field does not validate (type, range, pattern), the JSON is invalid, "
                      "or a multipart body does not parse."),
        401: declared(UNAUTHORIZED),
        404: declared("No such SKU or version, or no such SKU among `distractors`."),
        409: declared("select=green or yellow, but the version has no selection data."),
        413: declared("The body is larger than 64 KiB."),
        422: declared("The SKU name is unsafe, its recipe cannot make this size, or a "
                      "distractor cannot lend products (the SKU itself, a gan model)."),
        503: declared("Overloaded (this worker already holds BOXGEN_MAX_IN_FLIGHT requests: "
                      "retry after Retry-After seconds), no labeller, or the model version "
                      "cannot be read.", RETRY_AFTER),
    },
    UPLOAD_PATH: {
        400: declared("A field does not validate, or the multipart body does not parse "
                      "(too many parts, malformed)."),
        401: declared(UNAUTHORIZED),
        409: declared("No pretrained base in the model repository."),
        413: declared("The body, a file or an image's pixel count is over its limit."),
        415: declared("The body is not multipart/form-data."),
        422: declared("Too few or too many photos, a file that is not a whole PNG or JPEG, a "
                      "label file that does not parse or matches no photo, or a text value "
                      "in a file field."),
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` declaring `ErrorBody` answers for `statuses`."""
    descriptions = {401: UNAUTHORIZED, 404: "No such job."}
    return {status: {"model": ErrorBody, "description": descriptions[status]}
            for status in statuses}


def field_name(loc: list[Any] | tuple[Any, ...]) -> str | None:
    """A pydantic error location as a field name: ("images", 0) -> "images[0]"."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def as_error_body(body: Any) -> dict[str, Any] | None:
    """BentoML's own error answer as `{"error", "field"}`; None when it already is one."""
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # failed validation
        problems = [(field_name(p.get("loc") or ()), str(p.get("msg", "")))
                    for p in body["detail"] if isinstance(p, dict)]
        message = "; ".join(f"{field}: {msg}" if field else msg for field, msg in problems)
        return error_body(message or str(body.get("error")),
                          next((field for field, _ in problems if field), None))
    if isinstance(body, list) and body and isinstance(body[0], dict) and "error" in body[0]:
        return error_body(str(body[0]["error"]), None)  # a BentoML exception, list-wrapped
    return None


def component_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """`model`'s JSON schema; the models it nests go into the document's `schemas`."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(schema.pop("$defs", {}))
    return schema


def amend_docs(doc: Any) -> dict[str, Any] | None:
    """BentoML's generated OpenAPI document with `JSON_MODELS` and `API_ERRORS` put right."""
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        return None
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = component_schema(ErrorBody, schemas)
    for path, (request, answer) in JSON_MODELS.items():
        operation = doc["paths"].get(path, {}).get("post")
        if operation is not None:
            operation["requestBody"]["content"]["application/json"]["schema"] = (
                component_schema(request, schemas))
            operation["responses"]["200"]["content"]["application/json"]["schema"] = (
                component_schema(answer, schemas))
    for path, errors in API_ERRORS.items():
        operation = doc["paths"].get(path, {}).get("post")
        if operation is not None:
            operation.setdefault("responses", {}).update(
                {str(status): response for status, response in errors.items()})
    return doc


async def rewrite_json(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                       statuses: Callable[[int], bool],
                       rewrite: Callable[[Any], Any | None]) -> None:
    """Run `app`; a JSON answer with a status in `statuses` is buffered and replaced by
    `rewrite(body)` unless that is None. Other answers stream through untouched."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if (statuses(message["status"])
                    and headers.get(b"content-type", b"").startswith(b"application/json")):
                start = message
                return
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        try:
            replaced = rewrite(json.loads(body))
        except ValueError:  # not JSON after all: pass it on as it came
            replaced = None
        if replaced is not None:
            body = json.dumps(replaced).encode()
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    await app(scope, receive, capture)


class BentoErrorsMiddleware:
    """BentoML's own 4xx answers of the API methods in our `{"error", "field"}` shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in API_ERRORS:
            return await self.app(scope, receive, send)
        await rewrite_json(self.app, scope, receive, send, lambda s: 400 <= s < 500,
                           as_error_body)


class OpenApiMiddleware:
    """`/docs.json` put right (`amend_docs`): nulls kept, every error answer declared."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DOCS_PATH:
            return await self.app(scope, receive, send)
        await rewrite_json(self.app, scope, receive, send, lambda s: s == 200, amend_docs)
