"""Admission control: past a depth of `/generate` work in flight, refuse at once.

A worker runs `/generate` on `REQUEST_THREADS` BentoML threads; requests beyond that wait in
the worker for a thread. Under a burst the wait grows until clients time out, and a client
that times out and retries adds to it. So each worker holds at most `BOXGEN_MAX_IN_FLIGHT` /generate
requests (working or waiting); the next one gets an immediate 503 with `Retry-After` and the
usual `{"error", "field"}` body, which a load balancer or client can send elsewhere or retry.

The count is per worker process (no shared state: workers and replicas each protect
themselves), so a server with W workers holds up to W x BOXGEN_MAX_IN_FLIGHT. BentoML's own
`traffic.max_concurrency` is not used: it answers 429 without `Retry-After` or our body, counts
every route (health probes and job polls too) and exports no metric.
"""

from __future__ import annotations

from service import metrics
from service.errors import error_body
from service.security import GENERATE_PATH, ASGIApp, Receive, Scope, Send, send_json
from service.settings import ServiceSettings

ENDPOINT = "generate"
# A /generate request takes about a second; a client that waits that long finds room again.
RETRY_AFTER_SECONDS = 1


class AdmissionMiddleware:
    """503 + Retry-After for a `/generate` request when this worker already holds the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.limit = ServiceSettings.from_env().max_in_flight
        if self.limit < 1:
            raise ValueError(f"BOXGEN_MAX_IN_FLIGHT must be at least 1, got {self.limit}")
        self.in_flight = 0  # one event loop per worker: no lock needed
        # Series exist (at 0) from the start: a dashboard or alert sees "none refused" rather
        # than no data.
        metrics.REJECTED.labels(endpoint=ENDPOINT, reason="overload")
        metrics.IN_FLIGHT.labels(endpoint=ENDPOINT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != GENERATE_PATH):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            metrics.record_rejection(ENDPOINT, "overload")
            message = (f"server busy: this worker already holds {self.limit} /generate requests "
                       f"(BOXGEN_MAX_IN_FLIGHT); retry after {RETRY_AFTER_SECONDS} s")
            return await send_json(send, 503, error_body(message, None),
                                   [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
        self.in_flight += 1
        gauge = metrics.IN_FLIGHT.labels(endpoint=ENDPOINT)
        gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            gauge.dec()
