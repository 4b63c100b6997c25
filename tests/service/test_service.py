"""The live service over HTTP: /generate in both formats, models, API key, errors, metrics.

One real server (two workers, API key set) on a free localhost port serves the whole module.
"""

from __future__ import annotations

import base64
import io
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from service.core.cards import GeneratorCard
from service.core.object_bank import BANK_DIR, BankObject, ObjectBank
from service.core.repository import GENERATOR_FILE, REFINER_FILE, ModelRepository
from tests.service.server import (
    DEMO_SKU,
    BoxgenServer,
    publish_tiny_generator,
    tiny_repository,
)

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("service")
    models = tiny_repository(root / "models")
    with BoxgenServer(models, workers=2, api_key=API_KEY, log=root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BoxgenServer):
    with server.client() as c:
        yield c


def generate(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/generate", json={"sku": DEMO_SKU, "select": "none", **body})


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def metric_value(text: str, name: str, labels: str) -> float:
    """Sum of the samples of `name` whose label set contains `labels` (e.g. 'sku="demo"')."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_and_metrics_are_open_without_key(server: BoxgenServer):
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200, path


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/generate"), ("POST", "/finetune"), ("GET", "/jobs"), ("GET", "/models"),
     ("GET", "/jobs/0123456789abcdef0123456789abcdef")],
)
def test_api_needs_the_key(server: BoxgenServer, method: str, path: str):
    response = httpx.request(method, server.url + path, json={"sku": DEMO_SKU})
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"
    wrong = httpx.request(method, server.url + path, headers={"X-API-Key": "wrong"})
    assert wrong.status_code == 401


def test_x_api_key_header_works(server: BoxgenServer):
    response = httpx.get(server.url + "/models", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200


def test_generate_json_names_version_and_is_deterministic(client: httpx.Client):
    first = generate(client, n=3, seed=7)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["sku"] == DEMO_SKU and body["version"] == 1 and body["select"] == "none"
    assert len(body["images"]) == 3 and body["tried"] == 3 and body["passed_fraction"] == 1.0
    image = decode_png(body["images"][0]["png_base64"])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    for item in body["images"]:
        assert isinstance(item["boxes"], list)
        for box in item["boxes"]:
            assert 0 <= box["confidence"] <= 1 and 0 <= box["cx"] <= 1

    again = generate(client, n=3, seed=7).json()
    other = generate(client, n=3, seed=8).json()
    pngs = [i["png_base64"] for i in body["images"]]
    assert [i["png_base64"] for i in again["images"]] == pngs
    assert [i["png_base64"] for i in other["images"]] != pngs


def test_generate_zip_is_a_dataset_ultralytics_trains_on(client: httpx.Client, tmp_path: Path):
    response = generate(client, n=8, seed=1, format="zip")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["x-boxgen-model-version"] == "1"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "set")
    assert {"data.yaml", "annotations.json", "generation.json"} <= names
    assert sum(n.startswith("images/") for n in names) == 8
    assert sum(n.startswith("labels/") for n in names) == 8
    data = yaml.safe_load((tmp_path / "set" / "data.yaml").read_text())
    assert data["nc"] == len(data["names"]) == 4

    from training.ultralytics_setup import block_downloads, import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolov5n.yaml")
    with block_downloads():
        model.train(data=str(tmp_path / "set" / "data.yaml"), epochs=1, imgsz=32, batch=8,
                    device="cpu", workers=0, plots=False, verbose=False, val=False,
                    project=str(tmp_path / "runs"), name="train", exist_ok=True)
    assert Path(model.trainer.last).is_file()


def test_models_lists_skus_versions_and_cards(client: httpx.Client):
    body = client.get("/models").json()
    demo = next(s for s in body["skus"] if s["sku"] == DEMO_SKU)
    assert demo["serving"] == 1 and [v["version"] for v in demo["versions"]] == [1]
    assert demo["versions"][0]["card"]["kind"] == "generator"
    assert body["labeller"]["card"]["classes"] == ["tube", "bottle", "can", "spray"]
    assert body["base"] is not None


def test_selection_needs_selection_data_in_the_card(client: httpx.Client):
    response = client.post("/generate", json={"sku": DEMO_SKU, "n": 2, "select": "green"})
    assert response.status_code == 409
    assert response.json()["field"] == "select"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"sku": "no-such-sku"}, 404, "sku"),
        ({"sku": DEMO_SKU, "version": 99}, 404, "version"),
        ({"sku": DEMO_SKU, "n": 0}, 400, "n"),
        ({"sku": DEMO_SKU, "n": 100_000}, 400, "n"),
        ({"sku": "../etc"}, 400, "sku"),
        ({"sku": "a..b"}, 422, "sku"),
        ({"sku": DEMO_SKU, "format": "tar"}, 400, "format"),
        ({"sku": DEMO_SKU, "seed": -1}, 400, "seed"),
    ],
)
def test_bad_generate_requests_are_4xx_naming_the_field(
    client: httpx.Client, body: dict, status: int, field: str
):
    response = client.post("/generate", json={"select": "none", **body})
    assert response.status_code == status, response.text
    answer = response.json()
    named = answer.get("field") or [d["loc"][-1] for d in answer["detail"]]
    assert field in named


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xyz",
                                          "multipart/form-data"])
def test_a_json_body_sent_as_multipart_is_a_400_not_a_500(client: httpx.Client,
                                                          content_type: str):
    body = b'{"sku": "%s", "n": 1, "select": "none"}' % DEMO_SKU.encode()
    response = client.post("/generate", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert "multipart" in response.json()["error"]


def test_generate_takes_form_fields_too_and_refuses_a_huge_body(client: httpx.Client):
    fields = {"sku": (None, DEMO_SKU), "n": (None, "1"), "select": (None, "none")}
    response = client.post("/generate", files=fields)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1
    huge = b'{"sku": "demo"}' + b" " * (10 * 2**20)
    response = client.post("/generate", content=huge,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_metrics_move_across_two_workers(server: BoxgenServer, client: httpx.Client):
    before = httpx.get(server.url + "/metrics").text
    calls = 0

    def call(i: int) -> int:  # a fresh connection each, so both workers take some
        with server.client() as c:
            return generate(c, n=2, seed=i).status_code

    def workers() -> set[str]:  # the workers that answered /generate (the access log says)
        return set(re.findall(r"entry_service:boxgen:(\d+)\].*path=/generate.*status=200",
                              server.log_path.read_text()))

    # Rounds of 12 until both workers have answered: the kernel hands connections to
    # whichever worker accepts first, so one round can go to a single worker.
    with ThreadPoolExecutor(6) as pool:
        while calls < 48 and (calls == 0 or workers() != {"1", "2"}):
            assert list(pool.map(call, range(calls, calls + 12))) == [200] * 12
            calls += 12

    def delta(name: str, labels: str = f'sku="{DEMO_SKU}"') -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    # Each worker writes its own metrics file; a scrape right after the last answer can
    # miss the other worker's newest write, so scrape until the counts settle (or 10 s).
    requests = 'endpoint="generate",sku="demo",status="200"'
    deadline = time.monotonic() + 10
    while True:
        after = httpx.get(server.url + "/metrics").text
        if delta("boxgen_requests_total", requests) >= calls or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delta("boxgen_requests_total", requests) == calls
    assert delta("boxgen_images_generated_total") == 2 * calls
    assert delta("boxgen_samples_total") == delta("boxgen_samples_selected_total") == 2 * calls
    assert delta("boxgen_generate_latency_seconds_count") == calls
    assert delta("boxgen_image_seconds_count") == calls
    assert delta("boxgen_generate_latency_seconds_bucket", 'le="+Inf"') == calls
    for stage in ('stage="sample"', 'stage="label"'):  # one job per request and stage
        assert delta("boxgen_inference_batch_requests_sum", stage) == calls
        assert 0 < delta("boxgen_inference_batch_requests_count", stage) <= calls
    assert metric_value(after, "boxgen_models_loaded", 'kind="labeller"') == 1
    assert "boxgen_finetune_jobs_current{" in after
    assert "bentoml_service_request_total" in after  # BentoML's own metrics still there
    # Both workers answered /generate, so the figures above are merged from two processes.
    assert workers() == {"1", "2"}


def test_a_corrupt_model_keeps_the_others_serving_and_names_its_version(tmp_path: Path):
    """A cut-short copy (1,000 random bytes as the only version's generator) and a garbage
    card: the server still gets ready, the other SKU serves, each broken one answers 503
    naming its version and file. Before, the worker failed at startup and was restarted
    forever, with every request hanging."""
    models = tiny_repository(tmp_path / "models")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    ModelRepository(models).publish("broken", {GENERATOR_FILE: garbage}, GeneratorCard())
    publish_tiny_generator(models, "badcard")
    (models / "badcard" / "1" / "card.json").write_text("{not json")
    bank = ObjectBank([BankObject(0, np.full((6, 6, 3), 200, np.uint8), np.ones((6, 6), "f4"))],
                      np.full((32, 32, 3), 90, np.uint8), ["box"], [1])
    folder = bank.save(tmp_path / "bank")
    ModelRepository(models).publish(
        "badrefiner", {**{f"{BANK_DIR}/{p.name}": p for p in folder.iterdir()},
                       REFINER_FILE: garbage}, GeneratorCard(recipe="compose"))
    with BoxgenServer(models, log=tmp_path / "server.log") as server, server.client() as client:
        ok = client.post("/generate", json={"sku": DEMO_SKU, "n": 1, "select": "none"})
        assert ok.status_code == 200, ok.text
        for sku, select, file in (("broken", "none", "generator.onnx"),
                                  ("badcard", "green", "card.json"),
                                  ("badrefiner", "none", "refiner.onnx")):
            response = client.post("/generate", json={"sku": sku, "n": 1, "select": select})
            assert response.status_code == 503, response.text
            answer = response.json()
            assert answer["field"] == "sku"
            assert f"model {sku} version 1: {file} cannot be read" in answer["error"]
        listing = {s["sku"]: s for s in client.get("/models").json()["skus"]}
        assert "cannot be read" in listing["badcard"]["versions"][0]["card"]["error"]
        assert DEMO_SKU in listing
