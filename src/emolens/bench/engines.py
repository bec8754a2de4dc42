"""``emolens bench predict --engine ray``: images/s of ``emolens predict`` with the local engine and the Ray engine
(emolens.cluster) per number of workers."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..results import Result
from ..runtime import DEFAULT_TTA
from .common import sample_frame


@dataclass
class EnginesBench(Result):
    """``emolens predict`` per engine: one row each ({engine, workers, seconds, images_per_s, faces[, failed]}),
    the photos, the Ray batch size and cluster (its CPUs, how long it took to start, not counted in the rows)."""

    rows: list[dict[str, Any]]
    images: int
    batch_size: int
    cluster_cpus: int
    cluster: str
    startup_s: float
    cpus: int
    cpu: str
    tta: str = DEFAULT_TTA


def _bench_images(folder: Path, n: int) -> list[Path]:
    """``n`` 640x480 JPEG frames of the bundled photo (one face), each shifted a little so no two are alike."""
    import cv2

    frame = sample_frame()
    files = []
    for i in range(n):
        path = folder / f"frame{i:04d}.jpg"
        if not cv2.imwrite(str(path), np.roll(frame, 7 * (i % 40) - 140, axis=1)):
            raise OSError(f"could not write {path}")
        files.append(path)
    return files


def bench_engines(images: int = 64, workers: tuple[int, ...] = (1, 2), address: str | None = None,
                  batch_size: int = 4, detector: str = "auto", tta: str = DEFAULT_TTA) -> EnginesBench:
    """images/s of ``emolens predict`` on ``images`` photos, in one run: the local engine (one process), then the
    Ray engine with each number of ``workers`` (emolens.cluster). Each figure includes loading the model (each
    Ray worker loads its own); starting the Ray cluster is timed apart."""
    from ..cluster import cluster_cpus, connect, predict_files
    from ..predict import EmotionRecognizer

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _bench_images(Path(tmp), images)
        t = time.perf_counter()
        rec = EmotionRecognizer(detector=detector, tta=tta)
        faces = sum(len(rec.predict(f)) for f in files)
        seconds = time.perf_counter() - t
        rows.append({"engine": "local", "workers": 1, "seconds": seconds, "images_per_s": images / seconds,
                     "faces": faces})
        t = time.perf_counter()
        started = connect(address)
        startup = time.perf_counter() - t
        try:
            cpus = cluster_cpus()
            for n in workers:
                t = time.perf_counter()
                results, _ = predict_files(files, workers=n, batch_size=batch_size, detector=detector, tta=tta)
                seconds = time.perf_counter() - t
                rows.append({"engine": "ray", "workers": n, "seconds": seconds, "images_per_s": images / seconds,
                             "faces": sum(len(r.faces) for r in results),
                             "failed": sum(bool(r.error) for r in results)})
        finally:
            if started:
                import ray

                ray.shutdown()
    return EnginesBench(rows, images, batch_size, cpus, address or "local (started for the run)", startup,
                        os.cpu_count() or 0, _cpu_name(), tta)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_engines(result: EnginesBench) -> str:
    """Markdown table of :func:`bench_engines`."""
    lines = [f"{result['images']} photos (640x480, one face), `emolens predict` with TTA {result['tta']}; "
             f"{result['cpu']}, {result['cpus']} cores; Ray cluster: {result['cluster']}, "
             f"{result['cluster_cpus']} CPUs, started in {result['startup_s']:.1f} s (not counted); "
             f"Ray batch size {result['batch_size']}", "",
             "| engine | workers | seconds | images/s | images/s per worker | faces |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / r['workers']:.1f} | {r['faces']} |")
    return "\n".join(lines)
