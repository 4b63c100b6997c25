"""Fine-tune jobs over HTTP: upload, progress, publication served without restart, cancel,
bad uploads, and a server restart that keeps models and jobs and resumes the interrupted one.

Fine-tunes start from the tiny pretrained base (`tiny` profile), a few iterations each.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from tests.deploy.dashboard_metrics import dashboard_metric_names, promql_metric_names
from tests.service.server import BoxgenServer, photos, tiny_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "k8s" / "grafana" / "boxgen-dashboard.json"
ALERTS = REPO_ROOT / "k8s" / "base" / "prometheusrule.yaml"


def alert_metric_names(path: Path) -> set[str]:
    rules = yaml.safe_load(path.read_text())["spec"]["groups"]
    return {name for group in rules for rule in group["rules"]
            for name in promql_metric_names(rule["expr"]) if name.startswith("boxgen_")}


def generate_ok(client: httpx.Client) -> bool:
    return client.post("/generate", json={"sku": NEW_SKU, "n": 2, "select": "none"}).is_success

NEW_SKU = "new-sku"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    tiny_repository(root / "models")
    photos(root / "photos")
    return root


@pytest.fixture(scope="module")
def server(root: Path):
    with BoxgenServer(root / "models", workers=2, log=root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BoxgenServer):
    with server.client() as c:
        yield c


def uploads(root: Path, count: int = 10, labels: bool = False) -> list[tuple]:
    files = sorted((root / "photos" / "images").iterdir())[:count]
    parts = [("images", (f.name, f.read_bytes(), "image/png")) for f in files]
    if labels:
        parts += [("labels", (f.stem + ".txt", (root / "photos" / "labels" / (f.stem + ".txt"))
                              .read_bytes(), "text/plain")) for f in files]
    return parts


def submit(client: httpx.Client, root: Path, sku: str = NEW_SKU, **fields) -> str:
    # The refiner's steps are what progress, cancel and resume are seen on.
    response = client.post("/finetune", data={"sku": sku, "refine": "true", **fields},
                           files=uploads(root))
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued"
    return response.json()["job_id"]


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...],
             timeout: float = 120.0, until=lambda job: True) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states and until(job):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} never reached {states}: {job}")


def test_finetune_publishes_a_version_generate_serves_while_and_after(
    client: httpx.Client, root: Path
):
    job_id = submit(client, root, iterations="12")
    job = wait_for(client, job_id, ("running", "succeeded", "failed"))
    if job["state"] == "running":  # serving goes on during the fine-tune
        during = client.post("/generate", json={"sku": "demo", "n": 2, "select": "none"})
        assert during.status_code == 200
    job = wait_for(client, job_id, ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    assert job["version"] == 1 and job["images"] == 10 and job["attempts"] == 1
    assert job["progress"]["iteration"] == job["progress"]["iterations"] == 12
    assert set(job["report"]["categories"]) == {"green", "yellow", "white", "red"}

    served = client.post("/generate", json={"sku": NEW_SKU, "n": 2, "select": "none"})
    assert served.status_code == 200 and served.json()["version"] == 1
    models = client.get("/models").json()
    assert any(s["sku"] == NEW_SKU and s["serving"] == 1 for s in models["skus"])
    assert job_id in [j["job_id"] for j in client.get("/jobs").json()["jobs"]]


def test_selection_is_reported_for_a_fine_tuned_version(client: httpx.Client):
    """The fine-tune published selection data; /generate scores every sample against it."""
    for select, allowed in (("green", {"green"}), ("yellow", {"green", "yellow"})):
        response = client.post("/generate", json={"sku": NEW_SKU, "n": 3, "seed": 5,
                                                  "select": select})
        assert response.status_code == 200, response.text
        body = response.json()
        passed = len(body["images"])
        assert body["select"] == select and body["tried"] >= passed
        assert body["passed_fraction"] == pytest.approx(passed / body["tried"])
        assert body["complete"] == (passed == 3)
        assert body["complete"] or "ran out" in body["message"]
        for image in body["images"]:
            assert image["category"] in allowed and image["novelty"] >= 1
            assert 0 <= image["quality"] <= 1 and image["reason"]
    again = client.post("/generate", json={"sku": NEW_SKU, "n": 3, "seed": 5, "select": "yellow"})
    assert again.json() == body  # same seed, same selection


def test_cancel_kills_the_running_fine_tune(client: httpx.Client, root: Path):
    job_id = submit(client, root, sku="to-cancel", iterations="100000")
    wait_for(client, job_id, ("running",))
    pid = json.loads((root / "models" / "_jobs" / job_id / "job.json").read_text())["pid"]
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    assert not process_alive(pid)
    assert client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert client.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"  # idempotent
    assert client.delete("/jobs/" + "0" * 32).status_code == 404


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only its parent (the runner) can reap it.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG")  # 48 MP, compresses to ~50 kB
    return buffer.getvalue()


def test_dashboard_queries_only_live_metrics(server: BoxgenServer, client: httpx.Client):
    """Every boxgen_* series the Grafana dashboard and the alerts query is on a live /metrics
    (after generating and fine-tuning, so labelled series exist; GPU memory needs a GPU)."""
    assert generate_ok(client)
    live = {line.split("{")[0].split(" ")[0]
            for line in httpx.get(server.url + "/metrics").text.splitlines()
            if line.startswith("boxgen_")}
    queried = dashboard_metric_names(DASHBOARD) | alert_metric_names(ALERTS)
    missing = {name for name in queried - live if not name.startswith("boxgen_gpu_memory")}
    assert not missing, missing


@pytest.mark.parametrize(
    ("case", "status", "field"),
    [
        ("too_few", 422, "images"),
        ("too_many", 422, "images"),
        ("not_an_image", 422, "images[0]"),
        ("text_in_file_field", 422, "images"),
        ("bomb", 413, "images[0]"),
        ("bad_sku", 400, "sku"),
        ("unmatched_label", 422, "labels[0]"),
        ("short_label_row", 422, "labels[0]"),
        ("not_multipart", 415, "images"),
    ],
)
def test_bad_uploads_are_4xx_naming_the_field(
    client: httpx.Client, root: Path, case: str, status: int, field: str
):
    good = uploads(root)
    data: dict = {"sku": "bad-upload"}
    files: list | None = good
    if case == "too_few":
        files = good[:3]
    elif case == "too_many":
        files = [("images", (f"{i}.png", good[0][1][1], "image/png")) for i in range(101)]
    elif case == "not_an_image":
        files = [("images", ("a.png", b"this is not a png", "image/png"))] + good[1:]
    elif case == "text_in_file_field":
        # Without the guard BentoML would fetch this URL from the server.
        files = [("images", (None, "http://127.0.0.1:9/secret"))] + good
    elif case == "bomb":
        files = [("images", ("bomb.png", bomb_png(), "image/png"))] + good[1:]
    elif case == "bad_sku":
        data = {"sku": "../../etc"}
    elif case == "unmatched_label":
        files = good + [("labels", ("nothing.txt", b"0 0.5 0.5 0.1 0.1\n", "text/plain"))]
    elif case == "short_label_row":
        stem = Path(good[0][1][0]).stem
        files = good + [("labels", (f"{stem}.txt", b"0 0.5 0.5 0.1\n", "text/plain"))]
    elif case == "not_multipart":
        files = None
        data = {"sku": "x", "images": "http://127.0.0.1:9/secret"}
    response = client.post("/finetune", data=data, files=files)
    assert response.status_code == status, response.text
    answer = response.json()
    named = answer.get("field") or [d["loc"][-1] for d in answer["detail"]]
    assert field in named
    if case == "short_label_row":
        assert ".txt:1: expected" in answer["error"]
    jobs = client.get("/jobs").json()["jobs"]
    assert not any(j["sku"] == "bad-upload" for j in jobs)


def test_compose_takes_labels_and_an_empty_bin_and_serves_any_size(
    client: httpx.Client, root: Path
):
    empty = io.BytesIO()
    Image.new("RGB", (64, 64), (80, 90, 100)).save(empty, format="PNG")
    files = uploads(root, labels=True) + [("empty", ("empty.png", empty.getvalue(), "image/png"))]
    response = client.post("/finetune", data={"sku": "composed", "iterations": "3",
                                              "recipe": "compose", "refine": "true"},
                           files=files)
    assert response.status_code == 200, response.text
    job = wait_for(client, response.json()["job_id"], ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    card = next(s for s in client.get("/models").json()["skus"] if s["sku"] == "composed")
    card = card["versions"][0]["card"]
    assert card["recipe"] == "compose" and card["bank"]["empty"] == "upload"
    assert card["label_source"] == "labels" and card["refiner"]["steps"] == 3

    body = client.post("/generate", json={"sku": "composed", "n": 2, "size": 96, "seed": 3,
                                          "select": "none"}).json()
    assert [(i["width"], i["height"]) for i in body["images"]] == [(96, 96)] * 2
    assert all(b["confidence"] == 1 for i in body["images"] for b in i["boxes"])
    assert all(i["boxes"] for i in body["images"])
    for request, field in (({"sku": "composed", "size": 4096}, "size"),
                           ({"sku": "demo", "size": 96}, "size")):
        answer = client.post("/generate", json={"n": 1, "select": "none", **request})
        assert 400 <= answer.status_code < 500, answer.text
        body = answer.json()
        assert (body.get("field") or body["detail"][0]["loc"][-1]) == field, answer.text


def test_distractors_lend_another_skus_products_labelled_with_its_classes(
    client: httpx.Client, tmp_path: Path
):
    # Both compose SKUs of this module: "composed" (its photos' labels) and NEW_SKU.
    def generate(**fields) -> httpx.Response:
        return client.post("/generate", json={"n": 6, "seed": 1, "select": "none", **fields})

    own, other = (generate(sku=sku).json()["classes"] for sku in ("composed", NEW_SKU))
    body = generate(sku="composed", distractors=[NEW_SKU], max_distractors=3).json()
    k = len(own)
    assert body["classes"] == own + [f"{NEW_SKU}/{n}" if n in own else n for n in other]
    boxes = [b for image in body["images"] for b in image["boxes"]]
    lent = [b for b in boxes if b["class_id"] >= k]
    assert lent and len(lent) < len(boxes) <= 6 * (k + 3) + 6 * 3
    assert all(body["classes"][b["class_id"]] == b["class_name"] for b in boxes)

    archive = generate(sku="composed", distractors=[NEW_SKU], format="zip")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as files:
        data = yaml.safe_load(files.read("data.yaml"))
        coco = json.loads(files.read("annotations.json"))
    assert data["names"] == dict(enumerate(body["classes"]))
    assert [c["name"] for c in coco["categories"]] == body["classes"]
    # Judged too: the labeller must find the distractors, quality and palette leave them out.
    judged = generate(sku="composed", n=2, select="yellow", distractors=[NEW_SKU])
    assert judged.status_code == 200, judged.text

    for fields, status in (({"distractors": ["no-such-sku"]}, 404),
                           ({"distractors": ["composed"]}, 422),
                           ({"distractors": ["demo"]}, 422),
                           ({"distractors": [NEW_SKU], "max_distractors": 9}, 400),
                           ({"distractors": ["bad name!"]}, 400)):
        answer = generate(sku="composed", **fields)
        assert answer.status_code == status, answer.text
        named = answer.json().get("field") or answer.json()["detail"][0]["loc"]
        assert "distractors" in named, answer.text
    gan = client.post("/generate", json={"sku": "demo", "n": 1, "distractors": [NEW_SKU]})
    assert gan.status_code == 422 and gan.json()["field"] == "distractors", gan.text


@pytest.mark.parametrize("fields, extra, field", [
    ({"recipe": "diffusion"}, [], "recipe"),
    ({}, [("empty", ("a.png", b"not a png", "image/png"))], "empty"),
])
def test_bad_compose_fields_are_4xx_naming_the_field(
    client: httpx.Client, root: Path, fields: dict, extra: list, field: str
):
    response = client.post("/finetune", data={"sku": "bad-compose", **fields},
                           files=uploads(root) + extra)
    assert 400 <= response.status_code < 500, response.text
    answer = response.json()
    named = answer.get("field") or [d["loc"][-1] for d in answer["detail"]][0]
    assert named.startswith(field), response.text


def test_restart_keeps_models_and_jobs_and_resumes_interrupted(
    server: BoxgenServer, client: httpx.Client, root: Path
):
    job_id = submit(client, root, sku="resumed", iterations="100000")
    checkpoints = root / "models" / "_jobs" / job_id / "run" / "checkpoints"
    wait_for(client, job_id, ("running",),
             until=lambda job: checkpoints.is_dir() and any(checkpoints.iterdir()))
    before = {j["job_id"]: j["state"] for j in client.get("/jobs").json()["jobs"]}
    models_before = client.get("/models").json()
    server.stop()

    with BoxgenServer(root / "models", workers=1, log=root / "server2.log") as again:
        with again.client() as c:
            after = {j["job_id"]: j["state"] for j in c.get("/jobs").json()["jobs"]}
            assert set(after) == set(before)
            assert c.get("/models").json() == models_before
            assert all(after[j] == s for j, s in before.items() if j != job_id)
            job = wait_for(c, job_id, ("running",), until=lambda job: job["attempts"] == 2)
            assert job["started_at"] is not None
            assert c.post("/generate", json={"sku": "demo", "n": 1, "select": "none"}
                          ).json()["version"] == 1
            assert c.delete(f"/jobs/{job_id}").json()["state"] == "cancelled"

