"""Hostile input: each request is refused with a 4xx naming what is wrong, and nothing reaches
the model repository or the job store.

One real server (one worker, API key on) on the tiny repository, which has a base, so a
/finetune that passed its checks would create a job: every case asserts the repository,
`_jobs/` included, is exactly as before. Bombs and oversized bodies are built cheaply: a PNG
or JPEG header declaring a huge size, and uploads streamed from a generator.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.service.server import DEMO_SKU, BoxgenServer, tiny_repository

API_KEY = "hostile-key"
MiB = 2**20
BOUNDARY = "boxgen-hostile-boundary"
# Look-alikes and escapes a SKU (a folder name in the repository) must never take.
HOSTILE_SKUS = {
    "traversal": "../x",
    "nul": "demo\x00x",
    "cyrillic_a": "dem\u043e",  # Cyrillic 'о' in place of the Latin one
    "long": "a" * 500,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile")
    models = tiny_repository(root / "models")
    with BoxgenServer(models, api_key=API_KEY, log=root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BoxgenServer):
    with server.client() as c:
        yield c


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root`: relative path -> (size, modification time)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def unchanged(server: BoxgenServer) -> Iterator[None]:
    """Fails the test if anything under the model repository (jobs too) was written."""
    before = tree(server.models)
    yield
    assert tree(server.models) == before


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height RGB pixels, then a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b""))


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) declares width x height."""
    data = jpeg((8, 8))
    sof = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height, width
    return data[:sof] + struct.pack(">HH", height, width) + data[sof + 4:]


def photos(count: int = 10) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", png(), "image/png")) for i in range(count)]


def with_first(name: str, data: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Ten photos, the first replaced by `data` named `name`."""
    return [("images", (name, data, "image/png"))] + photos()[1:]


def streamed_upload(file_bytes: int) -> Iterator[bytes]:
    """A /finetune multipart body holding one `file_bytes` file, made 1 MiB at a time."""
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="sku"\r\n\r\nbig\r\n'
           f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
           'filename="big.png"\r\nContent-Type: image/png\r\n\r\n').encode()
    block = b"\0" * MiB
    for offset in range(0, file_bytes, MiB):
        yield block[:min(MiB, file_bytes - offset)]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def assert_refused(response: httpx.Response, status: int, field: str | None, words: str):
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["field"] == field and words in answer["error"], answer


@pytest.mark.parametrize(("files", "status", "field", "words"), [
    pytest.param([("images", (f"{i}.png", b"x", "image/png")) for i in range(1000)],
                 400, "images", "Too many files", id="1000_files"),
    pytest.param(with_first("bomb.png", png_bomb(30_000, 30_000)), 413, "images[0]",
                 "too many pixels", id="png_bomb_900MP"),
    pytest.param(with_first("bomb.png", png_bomb(8_000, 8_000)), 413, "images[0]",
                 "more than 40000000", id="png_bomb_64MP"),
    pytest.param(with_first("bomb.jpg", jpeg_bomb(60_000, 60_000)), 413, "images[0]",
                 "too many pixels", id="jpeg_bomb_3600MP"),
    pytest.param(with_first("bomb.jpg", jpeg_bomb(9_000, 9_000)), 413, "images[0]",
                 "more than 40000000", id="jpeg_bomb_81MP"),
    pytest.param(with_first("cut.png", png()[:80]), 422, "images[0]", "not a readable image",
                 id="truncated_png"),
    pytest.param(with_first("cut.jpg", jpeg()[:300]), 422, "images[0]",
                 "not a readable image", id="truncated_jpeg"),
    pytest.param(with_first("notes.png", b"hello, I am text\n" * 20), 422, "images[0]",
                 "not a readable image", id="text_named_png"),
    pytest.param(with_first("big.png", b"\0" * (25 * MiB)), 413, "images",
                 "larger than", id="file_over_20MiB"),
])
def test_hostile_uploads_are_refused(client: httpx.Client, unchanged: None, files: list,
                                     status: int, field: str, words: str):
    assert_refused(client.post("/finetune", data={"sku": "hostile"}, files=files),
                   status, field, words)


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content_length"])
def test_a_200_MiB_upload_is_refused_without_being_stored(
    server: BoxgenServer, unchanged: None, declare_length: bool
):
    """Streamed from a generator, so the test never holds 200 MiB; refused at the 200 MiB
    body cap (BOXGEN_MAX_UPLOAD_BYTES), from the header when it declares its length."""
    size = 200 * MiB
    headers = {"Authorization": f"Bearer {API_KEY}",
               "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if declare_length:
        headers["Content-Length"] = str(sum(len(part) for part in streamed_upload(size)))
    response = httpx.post(server.url + "/finetune", content=streamed_upload(size),
                          headers=headers, timeout=60)
    assert_refused(response, 413, "images", "request body larger than")


@pytest.mark.parametrize("sku", HOSTILE_SKUS.values(), ids=HOSTILE_SKUS.keys())
@pytest.mark.parametrize("endpoint", ["/generate", "/finetune"])
def test_hostile_sku_names_are_refused(client: httpx.Client, unchanged: None, endpoint: str,
                                       sku: str):
    if endpoint == "/generate":
        response = client.post(endpoint, json={"sku": sku, "n": 1, "select": "none"})
    else:
        response = client.post(endpoint, data={"sku": sku}, files=photos())
    assert_refused(response, 400, "sku", "should match pattern")


@pytest.mark.parametrize(("body", "status", "words"), [
    pytest.param(b'{"sku": "demo", "pad": "' + b"a" * (10 * MiB) + b'"}', 413,
                 "request body larger than 65536 bytes", id="10MB_json"),
    pytest.param(b'{"sku": "demo", "n": 1,', 400, "Invalid JSON", id="invalid_json"),
    pytest.param(b'\xff\xfe{"sku": "demo"}', 400, "Invalid JSON", id="not_utf8"),
    pytest.param(b'[{"sku": "demo"}]', 400, "Input should be", id="json_array"),
])
def test_hostile_generate_bodies_are_refused(client: httpx.Client, unchanged: None,
                                             body: bytes, status: int, words: str):
    """Body-level problems name no field (`field` is null); the message names the problem."""
    response = client.post("/generate", content=body,
                           headers={"Content-Type": "application/json"})
    assert_refused(response, status, None, words)


def test_the_server_still_serves_after_all_that(client: httpx.Client):
    response = client.post("/generate", json={"sku": DEMO_SKU, "n": 1, "select": "none"})
    assert response.status_code == 200, response.text
