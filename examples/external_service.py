"""Story 6: an external service behind an httpx client resource, with retries and a
rate limit.

The example starts its own local HTTP server (a pretend weather API on 127.0.0.1 that
fails the first request for some cities with a 503). The flow:

- holds an ``httpx.AsyncClient`` with ``scope(...)``: it closes only after every request
  submitted inside the block has finished;
- tags the fetch task ``weather-api``, limited to 5 calls per half second and 3 at once;
- retries failed calls (5xx answers and transport errors), with backoff and jitter.

Run: ``python examples/external_service.py``
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import anyio
import httpx

from orchestr import flow, get_run_logger, resource, scope, task
from orchestr.limits import limits

CITIES = ["oslo", "lima", "pune", "kyiv", "rome", "cork", "bern", "nuuk"]
# When each call started, client side: what the rate limit governs (arrival times at the
# server also carry connection set-up jitter).
call_starts: list[float] = []
FLAKY = {"lima", "kyiv", "nuuk"}  # their first request fails with 503


class WeatherAPI(BaseHTTPRequestHandler):
    """A tiny service: GET /weather/<city> -> {"city": ..., "celsius": ...}."""

    seen: ClassVar[dict[str, int]] = {}
    hits: ClassVar[list[float]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        city = self.path.rsplit("/", 1)[-1]
        with self.lock:
            self.hits.append(time.monotonic())
            count = self.seen[city] = self.seen.get(city, 0) + 1
        if city in FLAKY and count == 1:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"city": city, "celsius": sum(map(ord, city)) % 35}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep the example's output readable
        pass


@resource(name="weather server")
def weather_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WeatherAPI)
    thread = threading.Thread(target=server.serve_forever, name="weather-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def retry_on_server_errors(task: Any, record: Any, state: Any) -> bool:
    error = state.exception
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500
    return isinstance(error, httpx.TransportError)


@task(
    tags=["weather-api"],
    retries=3,
    retry_delay_seconds=[0.05, 0.1, 0.2],
    retry_jitter_factor=0.2,
    retry_condition_fn=retry_on_server_errors,
)
async def fetch_weather(client: httpx.AsyncClient, city: str) -> dict[str, Any]:
    call_starts.append(time.monotonic())
    response = await client.get(f"/weather/{city}")
    response.raise_for_status()
    return dict(response.json())


@flow
async def weather_report(base_url: str) -> dict[str, int]:
    logger = get_run_logger()
    async with scope(httpx.AsyncClient(base_url=base_url, timeout=5), name="http client") as client:
        readings = fetch_weather.map([client] * len(CITIES), CITIES)
    # The client closed only after every request (and retry) above had finished.
    report = {reading["city"]: reading["celsius"] for reading in await readings}
    logger.info("collected %d readings", len(report))
    return report


def shortest_span(starts: list[float], calls: int) -> float:
    """The shortest time covered by any ``calls`` consecutive call starts."""
    ordered = sorted(starts)
    return min(b - a for a, b in zip(ordered, ordered[calls - 1 :], strict=False))


def main() -> int:
    # At most 5 calls per half second, and 3 at once: a polite client.
    with (
        limits(concurrency={"weather-api": 3}, rate={"weather-api": (5, 0.5)}),
        weather_server() as base_url,
    ):
        state = anyio.run(lambda: weather_report(base_url, return_state=True))
    report = state.result()
    retried = sorted(r.task_name + ":" + r.name for r in state.record.task_runs if r.attempts > 1)
    print("report:", report)
    print(f"requests served: {len(WeatherAPI.hits)} for {len(CITIES)} cities")
    print("runs that needed a retry:", len(retried))
    # 5 calls per 0.5 s: any 6 consecutive calls must span at least 0.5 s (less the
    # few ms a busy machine may take between a call's slot and its first line).
    span = shortest_span(call_starts, 6)
    print(f"shortest span of 6 consecutive calls: {span:.2f} s (limit: 5 per 0.5 s)")
    print("final state:", state)
    ok = len(report) == len(CITIES) and len(WeatherAPI.hits) == len(CITIES) + len(FLAKY)
    return 0 if ok and span >= 0.45 and len(retried) == len(FLAKY) else 1


if __name__ == "__main__":
    sys.exit(main())
