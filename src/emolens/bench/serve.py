"""``emolens bench serve``: the HTTP API under load (concurrent clients, optionally during a slow-client attack)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..results import Result
from .common import ASSETS


@dataclass
class ServeBench(Result):
    """The HTTP API under load: requests, errors (by kind), throughput and latency percentiles in ms of the
    normal clients, and, during a slow-client attack, how many slow connections opened and the server closed."""

    url: str
    endpoint: str
    clients: int
    seconds: float
    slow_clients: int
    slow_opened: int
    slow_closed_by_server: int
    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    faces_per_image: int | None
    image: str = ""
    image_bytes: int = 0
    server: str = ""


def bench_image(path: str | None = None) -> tuple[bytes, str]:
    """The image the load test sends: ``path``, else the packaged astronaut photo (512x512, one face)."""
    from ..serve.inputs import image_format

    path = path or str(ASSETS / "astronaut.jpg")
    data = Path(path).read_bytes()
    if image_format(data) is None:
        raise ValueError(f"{path}: not a JPEG, PNG, BMP or WebP image")
    return data, Path(path).name


async def _slowloris(url: str, sockets: int, deadline: float, counts: dict[str, int]) -> None:
    """Keep ``sockets`` connections open that send one byte of a request head every second and never finish
    it; a connection the server closes is opened again. ``counts``: opened, closed (by the server)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Slow: ".encode() + b"a" * 10_000

    async def one() -> None:
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            counts["opened"] += 1
            try:
                for i in range(len(head)):
                    if time.perf_counter() >= deadline:
                        return
                    writer.write(head[i:i + 1])
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            counts["closed"] += 1  # the server hung up: the guard worked; come back
                            break
            except OSError:
                counts["closed"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(sockets)))


async def _load(url: str, clients: int, seconds: float, payload: bytes, endpoint: str,
                params: dict[str, Any], headers: dict[str, str], slow_clients: int = 0) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, headers=headers) as client:
        try:
            warm = await client.post(endpoint, params=params, files={"file": ("bench.jpg", payload, "image/jpeg")})
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
        if warm.status_code != 200:
            raise RuntimeError(f"{url}{endpoint} answered {warm.status_code}: {warm.text[:200]}")
        body = warm.json()
        faces = len(body["faces"]) if "faces" in body else sum(len(r["faces"]) for r in body["results"])
        slow = {"opened": 0, "closed": 0}
        attack = None
        if slow_clients:  # the slow clients connect first; the measured requests run while they hold on
            attack = asyncio.create_task(_slowloris(url, slow_clients, time.perf_counter() + seconds + 1.5, slow))
            await asyncio.sleep(1.0)
        deadline = time.perf_counter() + seconds

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(endpoint, params=params,
                                          files={"file": ("bench.jpg", payload, "image/jpeg")})
                    kind = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    kind = type(e).__name__
                if kind is None:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[kind] = errors.get(kind, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        if attack is not None:
            attack.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attack
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"url": url, "endpoint": endpoint, "clients": clients, "seconds": round(elapsed, 2),
            "slow_clients": slow_clients, "slow_opened": slow["opened"], "slow_closed_by_server": slow["closed"],
            "requests": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_ms": round(float(lat.mean()), 1),
            "faces_per_image": faces}


def bench_serve(url: str | None = None, clients: int = 16, seconds: float = 10.0, image: str | None = None,
                server_args: Sequence[str] = (), api_key: str | None = None, params: dict[str, Any] | None = None,
                endpoint: str = "/v1/predict", slow_clients: int = 0) -> ServeBench:
    """Load test: ``clients`` concurrent clients POST an image for ``seconds`` against ``url`` (default: a
    local ``emolens serve`` started for the run); returns requests/s, p50/p95/p99 latency (ms), errors.
    ``slow_clients`` > 0: meanwhile that many connections dribble an endless request head (slowloris), so
    the latencies are those of normal requests during such an attack."""
    if clients < 1 or seconds <= 0 or slow_clients < 0:
        raise ValueError("--clients must be >= 1, --seconds > 0 and --slow-clients >= 0")
    from ..serve.security import API_KEY_ENV
    from ..serve.server import local_server

    payload, what = bench_image(image)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    headers = {"X-API-Key": api_key} if api_key else {}
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(local_server(server_args))
            where = "local server (same machine as the clients)"
        else:
            where = url
        result = asyncio.run(_load(url.rstrip("/"), clients, seconds, payload, endpoint, params or {}, headers,
                                   slow_clients))
    return ServeBench(**result, image=what, image_bytes=len(payload), server=where)


def format_bench(r: ServeBench) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) or "none"
    attack = (f"  during a slow-client attack: {r['slow_clients']} connections dribbling request heads "
              f"({r['slow_opened']} opened, {r['slow_closed_by_server']} closed by the server)\n"
              if r.get("slow_clients") else "")
    return (f"{r['endpoint']} on {r['server']}: {r['clients']} clients for {r['seconds']} s, image {r['image']}\n"
            f"{attack}"
            f"  requests {r['requests']}  ok {r['ok']}  errors {r['errors']} ({kinds})\n"
            f"  throughput {r['requests_per_s']} requests/s\n"
            f"  latency ms  p50 {r['p50_ms']}  p95 {r['p95_ms']}  p99 {r['p99_ms']}  mean {r['mean_ms']}")
