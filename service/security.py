"""Who may call the service and what it accepts: API key, upload limits, image checks.

Two ASGI middlewares run in front of BentoML's request parsing:

- `ApiKeyMiddleware`: when a key is configured (`BOXGEN_API_KEY` or the secret file named by
  `BOXGEN_API_KEY_FILE`), the endpoints in `PROTECTED` need `Authorization: Bearer KEY` or
  `X-API-Key: KEY`; health (`/livez`, `/readyz`) and `/metrics` stay open for probes and
  Prometheus.
- `UploadGuardMiddleware`: checks a `/finetune` body before BentoML parses it. BentoML treats a
  text value in a file field as a URL and fetches it from the server (server-side request
  forgery), so every part of a file field must be an uploaded file; it also caps the body size,
  the file count and each file's size, and passes the uploaded file names on to the API method
  (BentoML's temporary files lose them, and labels are matched to images by name).

The content checks (`checked_images`, `checked_labels`) run in the API method, on the files
BentoML saved: Pillow reads only the header before the pixel-count check, so decompression bombs are
refused before they are decoded.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from service.core.repository import validate_sku
from service.core.yolo import parse_rows
from service.errors import RequestError, error_body
from service.settings import ServiceSettings, load_api_key

PROTECTED = ("/generate", "/finetune", "/jobs", "/models")
UPLOAD_PATH = "/finetune"
GENERATE_PATH = "/generate"
MAX_GENERATE_BYTES = 64 * 2**10  # a /generate request is a few fields: no reason for more
FILE_FIELDS = ("images", "labels", "empty")
IMAGE_FORMATS = ("PNG", "JPEG")
UPLOAD_NAMES_KEY = "boxgen_upload_names"  # scope["state"] key the guard leaves for the method
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": payload})


def is_protected(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED)


def key_matches(headers: dict[bytes, bytes], key: str) -> bool:
    """True when the request carries `key` as a Bearer token or an X-API-Key header."""
    given = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if not given and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


class ApiKeyMiddleware:
    """401 on protected endpoints unless the request carries the configured API key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.key = load_api_key()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.key is None or scope["type"] != "http" or not is_protected(scope["path"])
                or key_matches(dict(scope["headers"]), self.key)):
            return await self.app(scope, receive, send)
        await send_json(
            send, 401,
            error_body("missing or wrong API key: send 'Authorization: Bearer KEY' or "
                       "'X-API-Key: KEY'", "Authorization"),
            [(b"www-authenticate", b"Bearer")],
        )


class UploadGuardMiddleware:
    """Refuse unsafe `/finetune` bodies before BentoML parses (and might fetch) them, and
    `/generate` bodies that are too large or a multipart form that does not parse (BentoML
    answers those with a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.settings = ServiceSettings.from_env()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if (scope["type"] != "http" or scope["method"] != "POST"
                or path not in (UPLOAD_PATH, GENERATE_PATH)):
            return await self.app(scope, receive, send)
        try:
            if path == UPLOAD_PATH:
                body = await self.read_body(scope, receive, self.settings.max_upload_bytes,
                                            "images")
                names = await self.check_form(scope, body)
                scope.setdefault("state", {})[UPLOAD_NAMES_KEY] = names
            else:
                body = await self.read_body(scope, receive, MAX_GENERATE_BYTES, None)
                if content_type(scope).startswith("multipart/"):
                    form = await parse_form(scope, body, 16, None)
                    await form.close()
        except RequestError as exc:
            return await send_json(send, exc.status, error_body(exc.message, exc.field))

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def read_body(self, scope: Scope, receive: Receive, limit: int,
                        field: str | None) -> bytes:
        """The whole body; 413 naming `field` past `limit` bytes."""
        too_big = RequestError(f"request body larger than {limit} bytes", field, status=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError("client disconnected during upload", None, status=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def check_form(self, scope: Scope, body: bytes) -> dict[str, list[str]]:
        """Check file fields, counts and sizes; return the uploaded names per file field."""
        if not content_type(scope).startswith("multipart/form-data"):
            raise RequestError("/finetune takes multipart/form-data (files in 'images')",
                               "images", status=415)
        s = self.settings
        form = await parse_form(scope, body, s.max_images * 2 + 10, "images")
        names: dict[str, list[str]] = {}
        try:
            for field in FILE_FIELDS:
                values = form.getlist(field)
                for value in values:
                    if not isinstance(value, UploadFile):
                        raise RequestError(
                            f"'{field}' must hold uploaded files, got a text value", field
                        )
                    if value.size is not None and value.size > s.max_file_bytes:
                        raise RequestError(
                            f"{field} file {value.filename!r} is larger than "
                            f"{s.max_file_bytes} bytes", field, status=413,
                        )
                names[field] = [v.filename or "" for v in values]
        finally:
            await form.close()
        if len(names["empty"]) > 1:
            raise RequestError("upload at most one photo of the empty bin", "empty")
        count = len(names["images"])
        if not s.min_images <= count <= s.max_images:
            raise RequestError(
                f"upload {s.min_images} to {s.max_images} images (ten recommended), got {count}",
                "images",
            )
        return names


def content_type(scope: Scope) -> str:
    return dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()


async def parse_form(scope: Scope, body: bytes, max_files: int, field: str | None) -> FormData:
    """The multipart form in `body`; 400 naming `field` when it does not parse."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(scope, once).form(max_files=max_files, max_fields=64)
    except Exception as exc:  # malformed multipart, too many parts
        raise RequestError(f"unreadable multipart body: {exc}", field, 400) from None


@dataclass(frozen=True)
class UploadedFile:
    """An uploaded file BentoML saved, with the safe name it will be stored under."""

    path: Path
    name: str


def safe_names(uploaded: list[str], paths: list[Path], field: str) -> list[str]:
    """Storage names: the uploaded base names made filesystem-safe, unique within the field."""
    names = []
    for i, (original, path) in enumerate(zip(uploaded or [""] * len(paths), paths, strict=True)):
        base = SAFE_NAME.sub("_", Path(original).name).lstrip(".") or f"{field}_{i:03d}"
        names.append(base if "." in base else base + path.suffix)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RequestError(f"duplicate {field} file names: {', '.join(duplicates)}", field)
    return names


def checked_images(paths: list[Path], names: list[str], max_pixels: int,
                   field_name: str = "images") -> list[UploadedFile]:
    """Every upload must be a PNG or JPEG of at most `max_pixels` that decodes completely."""
    checked = []
    for i, (path, name) in enumerate(zip(paths, names, strict=True)):
        field = f"{field_name}[{i}]"
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                if image.format not in IMAGE_FORMATS:
                    raise RequestError(f"{name} is {image.format}, not PNG or JPEG", field)
                if width * height > max_pixels:
                    raise RequestError(
                        f"{name} has {width}x{height} pixels, more than {max_pixels}", field,
                        status=413,
                    )
                image.load()  # decode now, so a truncated file fails here, not in training
        except RequestError:
            raise
        except Image.DecompressionBombError as exc:  # Pillow's own limit: 2 x 89 MP, at open
            raise RequestError(f"{name} has too many pixels ({exc})", field,
                               status=413) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(f"{name} is not a readable image ({exc})", field) from None
        checked.append(UploadedFile(path, Path(name).stem + Path(name).suffix.lower()))
    return checked


def checked_labels(
    paths: list[Path], names: list[str], images: list[UploadedFile]
) -> list[UploadedFile]:
    """YOLO label files (`class cx cy w h` per line, normalised), each named after an image."""
    stems = {Path(image.name).stem for image in images}
    checked = []
    for i, (path, name) in enumerate(zip(paths, names, strict=True)):
        field = f"labels[{i}]"
        stem = Path(name).stem
        if stem not in stems:
            raise RequestError(f"label file {name} matches no uploaded image by name", field)
        try:
            parse_rows(path.read_text(encoding="utf-8"), name)
        except (UnicodeDecodeError, OSError):
            raise RequestError(f"{name} is not a UTF-8 text file", field) from None
        except ValueError as e:
            raise RequestError(str(e), field) from None
        checked.append(UploadedFile(path, stem + ".txt"))
    return checked


def checked_sku(sku: str) -> str:
    """`sku` if it is a safe SKU name, else a 422 naming the `sku` field."""
    try:
        return validate_sku(sku)
    except ValueError as exc:
        raise RequestError(str(exc), "sku") from None


def checked_empty(empty: Path, names: dict[str, list[str]], settings: ServiceSettings
                  ) -> UploadedFile:
    """Check a /finetune upload's optional photo of the empty bin."""
    name = safe_names(names.get("empty", []), [empty], "empty")
    return checked_images([empty], name, settings.max_pixels, "empty")[0]


def checked_uploads(
    images: list[Path], labels: list[Path], names: dict[str, list[str]],
    settings: ServiceSettings,
) -> tuple[list[UploadedFile], list[UploadedFile]]:
    """Check a /finetune upload's files (count, pixels, decoding, label format and names)."""
    if not settings.min_images <= len(images) <= settings.max_images:
        raise RequestError(f"upload {settings.min_images} to {settings.max_images} images "
                           f"(ten recommended), got {len(images)}", "images")
    image_names = safe_names(names.get("images", []), images, "images")
    accepted = checked_images(images, image_names, settings.max_pixels)
    label_names = safe_names(names.get("labels", []), labels, "labels")
    return accepted, checked_labels(labels, label_names, accepted)
