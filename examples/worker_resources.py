"""Per-worker resources on Dask: a SQLite connection and an HTTP client per worker.

A flow fetches the temperature of 12 cities from a weather service (a small HTTP server
this program starts on 127.0.0.1) and stores each reading in a SQLite cache. The task
runs are spread over the 2 worker processes of a temporary Dask cluster. Neither a
database connection nor an HTTP client can be sent to a worker (they do not pickle), and
opening one per task would be wasteful: with ``@per_worker_resource`` each worker opens
one connection and one ``httpx.Client`` on its first task, every later task there reuses
them, and both are closed (the cache committed) once, when the flow run ends.

Run it with ``python examples/worker_resources.py``. The ``if __name__ == "__main__":``
guard matters: Dask starts its worker processes by importing this file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from orchestr import flow, per_worker_resource, task
from orchestr.dask import DaskTaskRunner
from orchestr.testing import assert_resources_cleaned_up

CITIES = [
    "Amsterdam", "Berlin", "Cairo", "Dublin", "Edinburgh", "Florence",
    "Geneva", "Helsinki", "Istanbul", "Jakarta", "Kyoto", "Lisbon",
]  # fmt: skip


# -- the per-worker resources (configured through the environment the workers inherit) ------
@per_worker_resource
def cache() -> Iterator[sqlite3.Connection]:
    """This worker's SQLite cache: one file and one connection per worker process."""
    path = Path(os.environ["WEATHER_CACHE_DIR"]) / f"cache-{os.getpid()}.sqlite"
    # Shared by the task threads of the worker: not bound to the thread that opened it.
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("create table if not exists readings (city text, celsius real)")
    yield connection
    connection.commit()
    connection.close()


# A callable returning a context manager works too: entered at setup, exited at cleanup.
weather = per_worker_resource(
    lambda: httpx.Client(base_url=os.environ["WEATHER_URL"], timeout=10), name="weather"
)


# -- the flow ---------------------------------------------------------------------------------
@task(retries=1)
def fetch_and_store(city: str) -> float:
    reading = weather.get().get(f"/weather/{city}").raise_for_status().json()
    cache.get().execute("insert into readings values (?, ?)", (city, reading["celsius"]))
    return float(reading["celsius"])


@flow(
    task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "dashboard_address": ":0"}
    )
)
def weather_report(cities: list[str]) -> dict[str, float]:
    futures = fetch_and_store.map(cities)
    return {city: future.result() for city, future in zip(cities, futures, strict=True)}


# -- a weather service, here in this process ----------------------------------------------------
class WeatherService(BaseHTTPRequestHandler):
    """Answers ``GET /weather/<city>`` with a made-up temperature; keeps connections
    open (HTTP/1.1) and counts them, and the requests."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    connections = 0
    requests = 0

    def setup(self) -> None:
        super().setup()
        with WeatherService.lock:
            WeatherService.connections += 1

    def do_GET(self) -> None:  # the http.server API
        city = self.path.rsplit("/", 1)[-1]
        celsius = sum(map(ord, city)) % 30 - 2  # made up, the same every time
        body = json.dumps({"city": city, "celsius": celsius}).encode()
        with WeatherService.lock:
            WeatherService.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WeatherService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as directory:
        os.environ["WEATHER_CACHE_DIR"] = directory
        os.environ["WEATHER_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            state = weather_report(CITIES, return_state=True)
        finally:
            server.shutdown()
            server.server_close()
        report = state.result()
        print(f"hottest: {max(report, key=report.__getitem__)} ({max(report.values())} °C)")

        set_up = assert_resources_cleaned_up(state)  # raises if any was not cleaned up
        print("every per-worker resource was cleaned up exactly once")
        caches = sorted(Path(directory).glob("cache-*.sqlite"))
        rows = 0
        for path in caches:  # committed by each worker's cleanup
            with sqlite3.connect(path) as connection:
                rows += connection.execute("select count(*) from readings").fetchone()[0]
            connection.close()
    workers = len(caches)
    print(f"worker processes that ran tasks: {workers}; set up: {dict(sorted(set_up.items()))}")
    print(f"HTTP requests served: {WeatherService.requests}")
    print(f"rows in the worker caches: {rows}")
    one_each = set_up == {"cache": workers, "weather": workers}
    one_each = one_each and WeatherService.connections == workers
    print(f"one SQLite connection and one HTTP client per worker: {one_each}")


if __name__ == "__main__":
    main()
