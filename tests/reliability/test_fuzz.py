"""Schemathesis fuzzes both OpenAPI documents of a live server, in every phase.

One real server (one worker, API key on) serves the tiny repository, plus its generator under
the documents' example SKU, so generated requests reach image generation, and one cancelled job,
so the stateful phase follows `GET /jobs` to real job records. Schemathesis runs its examples,
coverage, fuzzing and stateful phases against `/docs.json` (BentoML's: every route) and
`/jobs-openapi.json` (FastAPI's: jobs and models) and checks every answer: no 5xx, its status
declared, its body as its schema says. Each run prints the requests each phase sent (the
README's table quotes them).

Schemathesis' engine (what `schemathesis run` runs) drives it, not its pytest plugin: the
plugin of 4.32 reads `request.node._nodeid`, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.engine import Status, StopReason, events, from_schema

from tests.service.server import BoxgenServer, photos, publish_tiny_generator, tiny_repository

API_KEY = "fuzz-key"
EXAMPLE_SKU = "tube-red-200ml"  # the example of the SKU field in service/schemas.py
DOCUMENTS = ("/docs.json", "/jobs-openapi.json")
# Examples per operation (fuzzing phase) and scenarios (stateful phase): 100 sends about 1,200
# requests to /docs.json and 850 to /jobs-openapi.json, in 14 s and 9 s on two cores.
MAX_EXAMPLES = 100
# /finetune rejects generated bodies (no real photos), each after parsing the upload.
FINETUNE_EXAMPLES = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    models = tiny_repository(root / "models")
    publish_tiny_generator(models, EXAMPLE_SKU)
    with BoxgenServer(models, api_key=API_KEY, log=root / "server.log") as running:
        seed_cancelled_job(running, photos(root / "photos"))
        yield running


def seed_cancelled_job(server: BoxgenServer, folder: Path) -> None:
    """A job record for the stateful phase to find; cancelled at once, so nothing trains."""
    files = [("images", (p.name, p.read_bytes(), "image/png"))
             for p in sorted((folder / "images").iterdir())]
    with server.client() as client:
        accepted = client.post("/finetune", data={"sku": "fuzz-job"}, files=files)
        if accepted.status_code == 200:  # 409 when the template has no base: no job then
            client.delete(f"/jobs/{accepted.json()['job_id']}")


def fuzz_config(url: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "base-url": url,
        "headers": {"Authorization": f"Bearer {API_KEY}"},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
        # Schemathesis sets Hypothesis' deadline=None itself; the seed makes runs repeatable
        # and no example database or cache is written into the work tree.
        "seed": 0,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "cache": {"enabled": False},
        "operations": [{"include-path": "/finetune",
                        "generation": {"max-examples": FINETUNE_EXAMPLES}}],
        "request-timeout": 60,
    })


@dataclass
class FuzzRun:
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    phases: dict[str, Status] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: StopReason | None = None


def fuzz(url: str, document: str) -> FuzzRun:
    """Run every Schemathesis phase against `document`; requests per phase and failures."""
    schema = schemathesis.openapi.from_url(url + document, config=fuzz_config(url))
    run = FuzzRun()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.requests[event.phase.value] += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                run.failures += [f"{check.failure_info.failure}\n{check.failure_info.code_sample}"
                                 for check in checks if check.failure_info is not None]
        elif isinstance(event, events.PhaseFinished):
            run.phases[event.phase.name.value] = event.status
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            run.errors.append(repr(event.exception))
        elif isinstance(event, events.EngineFinished):
            run.stop = event.stop_reason
    return run


@pytest.mark.parametrize("document", DOCUMENTS)
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(
    server: BoxgenServer, document: str, capsys: pytest.CaptureFixture[str]
):
    run = fuzz(server.url, document)
    with capsys.disabled():
        print(f"\nfuzz {document}: requests per phase {dict(run.requests)} "
              f"(total {sum(run.requests.values())}), failures {len(run.failures)}")
    assert not run.errors, run.errors
    unique = sorted(set(run.failures))
    assert not unique, f"{len(unique)} distinct failures:\n\n" + "\n\n".join(unique[:5])
    assert run.stop == StopReason.COMPLETED
    # Every phase ran; the jobs document has no examples for its examples phase.
    ran = {"coverage", "fuzzing", "stateful"} | ({"examples"} if document == "/docs.json"
                                                else set())
    assert ran <= {phase for phase, status in run.phases.items() if status != Status.SKIP}
    assert all(run.requests[phase] > 0 for phase in ran), run.requests


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xyz",
                                          "multipart/form-data"])
def test_a_json_body_sent_as_multipart_is_a_400_naming_it(server: BoxgenServer,
                                                          content_type: str):
    """The fuzzer's first find: BentoML answered this with a 500."""
    with server.client() as client:
        response = client.post("/generate", content=b'{"sku": "demo", "n": 1}',
                               headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert "multipart" in response.json()["error"]


@pytest.mark.parametrize(("body", "field", "words"), [
    (b'{"sku": "demo", "n": 0}', "n", "greater than or equal to 1"),
    (b'{"sku": "demo", "n": 1, "seed": "x"}', "seed", "valid integer"),
    (b'{"n": 1}', "sku", "Field required"),
    (b'{"sku": "demo", "n": ', None, "Invalid JSON"),
])
def test_bentoml_validation_answers_are_ours(server: BoxgenServer, body: bytes,
                                             field: str | None, words: str):
    """BentoML's own 400 `{"error", "detail": [...]}` contradicted its document; it is now
    `{"error", "field"}` like every other error."""
    with server.client() as client:
        response = client.post("/generate", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json().keys() == {"error", "field"}
    assert response.json()["field"] == field and words in response.json()["error"]


def test_docs_declare_nulls_and_every_error_answer(server: BoxgenServer):
    docs = httpx.get(server.url + "/docs.json").json()
    generate = docs["paths"]["/generate"]["post"]
    assert {"400", "401", "404", "409", "413", "422", "503"} <= set(generate["responses"])
    assert "Retry-After" in generate["responses"]["503"]["headers"]
    answer = generate["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"type": "null"} in answer["properties"]["seed"]["anyOf"]  # BentoML dropped it
    finetune = docs["paths"]["/finetune"]["post"]["responses"]
    assert {"400", "401", "409", "413", "415", "422"} <= set(finetune)
    jobs = httpx.get(server.url + "/jobs-openapi.json").json()
    assert {"401", "404"} <= set(jobs["paths"]["/jobs/{job_id}"]["get"]["responses"])
