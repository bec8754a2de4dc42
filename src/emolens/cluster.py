"""Scaling out: label photo collections and video archives on a Ray cluster (``--engine ray``).

    import ray
    from emolens.cluster import predict_dataset

    ds = ray.data.read_binary_files("/shared/photos", include_paths=True)   # or read_images(..., include_paths=True)
    faces = predict_dataset(ds, workers=8, batch_size=16)                   # one row per face
    faces.write_parquet("/shared/faces")

* :func:`predict_dataset`: a Ray Dataset of images (``bytes``, ``image`` arrays or ``path`` columns) -> a Ray
  Dataset with one row per face (source, face index, box, emotion, confidence, ``p_<class>``), computed by a
  pool of actors that each load the model and the detector once and run :class:`emolens.EmotionRecognizer`.
* :func:`predict_files`: what ``emolens predict --engine ray`` runs: files in, ``(path, faces)`` out in the
  order the files were given, the same values the local engine gives (same code, same decoder).
* :func:`run_video_jobs`: what ``emolens video FILE... --engine ray`` runs: one task per video, each calling
  :func:`emolens.video.process_video` and writing its own folder of outputs atomically; a folder whose
  ``summary.json`` (written last) matches the video and the options is complete and skipped on a re-run.

Ray is optional (``pip install "emolens[ray]"``) and imported only inside these functions: the local engine never
loads it. Fault tolerance is Ray's: a killed actor is restarted (it loads the model again) and its unfinished
batches are retried; a batch's rows are only kept once the batch has finished, so nothing is lost or doubled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .predict import FileResult
from .preprocess import CLASSES
from .runtime import DEFAULT_TTA

if TYPE_CHECKING:  # pragma: no cover - typing only
    import ray.data

    from .predict import Face

#: What to install when Ray is missing (the message of :class:`ClusterError`).
INSTALL_HINT = 'the ray engine needs Ray, which is not installed: pip install "emolens[ray]" ' \
               '(or pip install "ray[data]>=2.40,<3")'

#: Per-actor CPU reservation. Below 1 so that a pool with one actor per core still leaves CPU to Ray Data's read
#: tasks: on a 2-CPU cluster two whole-CPU actors starve the reads and the run hangs.
ACTOR_CPUS = 0.5

#: Columns :func:`predict_dataset` reads an image from, in order of preference.
IMAGE_COLUMNS = ("bytes", "image", "path")


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached."""


def require_ray():
    """The ``ray`` module, or ClusterError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] extra: pyarrow, pandas
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join or start a cluster; returns True when this call started one (the caller then shuts it down).

    ``address``: None starts a private cluster on this machine (``num_cpus`` CPUs, default all; no dashboard);
    ``"auto"`` joins the cluster that ``ray start --head`` runs here; ``"ray://host:10001"`` connects a Ray client
    to a remote head (needs ``ray[client]``). Already connected: nothing happens."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: "
                           f"{str(e).splitlines()[0][:200]}") from None
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress display; Ray's bars would interleave with the tables
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return True


def cluster_cpus() -> int:
    """CPUs of the connected cluster (at least 1)."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ---------------------------------------------------------------------------------------------- photos


def _recognizer_options(model: str | Path | None, runtime: str, detector: str, tta: str, detect: bool,
                        margin: float | None, align: bool, threads: int) -> dict[str, Any]:
    """The EmotionRecognizer arguments, checked here (on the driver) so a typo fails at once, not in every actor."""
    from .faces import DetectorError, list_detectors
    from .runtime import TTA_CHOICES, ModelError

    if detector not in list_detectors():
        raise DetectorError(f"unknown face detector {detector!r}: use one of {', '.join(list_detectors())}")
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_CHOICES)}")
    if model is not None and not Path(model).is_file():
        raise ModelError(f"{model}: no such model file")
    return {"model": None if model is None else str(model), "runtime": runtime, "detector": detector, "tta": tta,
            "detect": detect, "margin": margin, "align": align, "threads": threads}


class FaceLabeller:
    """The actor behind :func:`predict_dataset`: loads the recognizer once, then labels batches.

    A batch is a dict of columns; the image comes from ``bytes`` (encoded file), ``image`` (an array, RGB as
    ``ray.data.read_images`` gives it) or ``path`` (read here). Every other column is copied to each face row.
    ``keep_empty``: an image without a face, or unreadable, gives one row with ``face`` = -1 (``error`` says why
    it failed, empty when there was simply no face). ``annotate_dir``: also write each image with its faces drawn
    to that folder, under the name in its ``annotated`` column (``draw_bars``: with probability panels)."""

    def __init__(self, options: dict[str, Any], keep_empty: bool = False, annotate_dir: str | None = None,
                 draw_bars: bool = True):
        from .predict import EmotionRecognizer

        self.recognizer = EmotionRecognizer(**options)
        self.classes = self.recognizer.classes
        self.keep_empty = keep_empty
        self.annotate_dir = Path(annotate_dir) if annotate_dir else None
        self.draw_bars = draw_bars

    def _load(self, batch: dict[str, np.ndarray], i: int, source: str) -> np.ndarray:
        from .predict import decode_bytes, read_image, to_bgr

        if "bytes" in batch:
            return decode_bytes(bytes(batch["bytes"][i]), source or "image", self.recognizer.max_pixels)
        if "image" in batch:
            return to_bgr(np.asarray(batch["image"][i]), "rgb", self.recognizer.max_pixels)
        return read_image(str(batch["path"][i]), self.recognizer.max_pixels)

    def _annotate(self, name: str, img: np.ndarray, faces: Sequence[Face]) -> None:
        import cv2

        from .checkpoint import atomic_write_bytes

        assert self.annotate_dir is not None
        ok, enc = cv2.imencode(Path(name).suffix, self.recognizer.draw(img, faces, bars=self.draw_bars))
        if ok:
            atomic_write_bytes(self.annotate_dir / name, enc.tobytes())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .predict import ImageError

        keys = list(batch)
        if not any(k in batch for k in IMAGE_COLUMNS):
            raise ValueError(f"the dataset has no image column: give one of {', '.join(IMAGE_COLUMNS)} "
                             f"(it has {', '.join(keys)})")
        n = len(batch[keys[0]])
        sources = [str(batch["path"][i]) if "path" in batch else "" for i in range(n)]
        images: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for i in range(n):
            try:
                images[i] = self._load(batch, i, sources[i])
            except ImageError as e:
                errors[i] = str(e)
        faces: dict[int, list] = {}
        if images:
            try:  # all the batch's face crops go through the classifier together
                for i, f in zip(images, self.recognizer.predict_batch(list(images.values())), strict=True):
                    faces[i] = f
            except Exception:  # noqa: BLE001 - one image that breaks the detector must not fail the batch
                for i, img in images.items():
                    try:
                        faces[i] = self.recognizer.predict(img)
                    except Exception as e:  # noqa: BLE001
                        errors[i] = f"{sources[i] or 'image'}: {type(e).__name__}: {e}"
        if self.annotate_dir is not None and "annotated" in batch:
            for i, f in faces.items():
                self._annotate(str(batch["annotated"][i]), images[i], f)
        sizes = {i: (int(img.shape[1]), int(img.shape[0])) for i, img in images.items()}
        return self._rows(batch, n, sources, faces, errors, sizes)

    def _rows(self, batch: dict[str, np.ndarray], n: int, sources: list[str], faces: dict[int, list],
              errors: dict[int, str], sizes: dict[int, tuple[int, int]]) -> dict[str, np.ndarray]:
        take: list[int] = []  # the input row each output row comes from
        cols: dict[str, list] = {"source": [], "face": [], "x": [], "y": [], "w": [], "h": [], "emotion": [],
                                 "confidence": [], **{f"p_{c}": [] for c in self.classes}, "width": [],
                                 "height": [], "landmarks": [], "error": []}

        def add(i: int, k: int, box, emotion: str, conf: float, probs: dict[str, float], error: str,
                landmarks: str = "") -> None:
            take.append(i)
            cols["landmarks"].append(landmarks)
            width, height = sizes.get(i, (0, 0))
            for key, v in zip(("source", "face", "x", "y", "w", "h", "emotion", "confidence", "width", "height",
                               "error"), (sources[i], k, *box, emotion, conf, width, height, error), strict=True):
                cols[key].append(v)
            for c in self.classes:
                cols[f"p_{c}"].append(probs.get(c, 0.0))

        for i in range(n):
            if i in errors or not faces.get(i):
                if self.keep_empty:
                    add(i, -1, (0, 0, 0, 0), "", 0.0, {}, errors.get(i, ""))
                continue
            for k, f in enumerate(faces[i]):
                add(i, k, f.box, f.emotion, f.confidence, f.probabilities, "",
                    json.dumps(f.to_dict()["landmarks"]) if f.landmarks else "")
        out: dict[str, np.ndarray] = {}
        idx = np.asarray(take, np.int64)
        for key, v in batch.items():  # the input's other columns (ids, paths...) ride along with each face
            if key not in ("bytes", "image", "path", "annotated", *cols):
                out[key] = np.asarray(v)[idx]
        out.update({"source": np.asarray(cols["source"], dtype=object),
                    "face": np.asarray(cols["face"], np.int64),
                    **{k: np.asarray(cols[k], np.int64) for k in ("x", "y", "w", "h", "width", "height")},
                    "emotion": np.asarray(cols["emotion"], dtype=object),
                    "confidence": np.asarray(cols["confidence"], np.float64),
                    **{f"p_{c}": np.asarray(cols[f"p_{c}"], np.float64) for c in self.classes},
                    "width": np.asarray(cols["width"], np.int64), "height": np.asarray(cols["height"], np.int64),
                    "landmarks": np.asarray(cols["landmarks"], dtype=object),
                    "error": np.asarray(cols["error"], dtype=object)})
        return out


def predict_dataset(ds: ray.data.Dataset, *, model: str | Path | None = None, runtime: str = "onnx",
                    detector: str = "auto", tta: str = DEFAULT_TTA, detect: bool = True, margin: float | None = None,
                    align: bool = True, workers: int | None = None, batch_size: int = 16,
                    num_cpus: float = ACTOR_CPUS, threads: int = 1, keep_empty: bool = False,
                    annotate_dir: str | Path | None = None, draw_bars: bool = True) -> ray.data.Dataset:
    """One row per face of every image in ``ds``, labelled by a pool of ``workers`` actors (default: one per
    cluster CPU), each holding its own model and detector and taking ``batch_size`` images at a time.

    The image column is ``bytes`` (``read_binary_files``: decoded as the local engine decodes files, EXIF
    orientation applied), ``image`` (``read_images``: arrays, RGB) or ``path`` (files every node can read). Output
    columns: ``source`` (the ``path`` column, else empty), ``face`` (0, 1, ... left to right), ``x, y, w, h``,
    ``emotion``, ``confidence``, ``p_<class>`` for the model's classes, the image's ``width`` and ``height``,
    ``landmarks`` (JSON text, empty when the detector gives none), ``error``, plus every other input column
    (an id, for instance). The recognizer options are :class:`emolens.EmotionRecognizer`'s; ``threads``: ONNX
    Runtime threads per actor; ``num_cpus``: CPUs each actor reserves. Rows come in no particular order.

    >>> faces = predict_dataset(ray.data.read_binary_files("photos/", include_paths=True), workers=2)
    >>> faces.to_pandas().groupby("emotion").size()  # doctest: +SKIP
    """
    ray = require_ray()
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    options = _recognizer_options(model, runtime, detector, tta, detect, margin, align, threads)
    workers = workers or cluster_cpus()
    return ds.map_batches(FaceLabeller, batch_size=batch_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=num_cpus,
                          fn_constructor_kwargs={"options": options, "keep_empty": keep_empty,
                                                 "annotate_dir": None if annotate_dir is None else str(annotate_dir),
                                                 "draw_bars": draw_bars})


def _faces_of(rows: list[dict[str, Any]], classes: Sequence[str]) -> list[Face]:
    from .predict import Face

    def landmarks(text: str) -> dict[str, tuple[float, float]] | None:
        return {k: (float(v[0]), float(v[1])) for k, v in json.loads(text).items()} if text else None

    return [Face((int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"])), str(r["emotion"]), float(r["confidence"]),
                 {c: float(r[f"p_{c}"]) for c in classes}, landmarks(str(r["landmarks"])))
            for r in sorted(rows, key=lambda r: int(r["face"]))]


def predict_files(files: Sequence[str | Path], *, annotated_names: Sequence[str] | None = None,
                  annotate_dir: str | Path | None = None, on_progress: Callable[[int], None] | None = None,
                  **options) -> tuple[list[FileResult], tuple[str, ...]]:
    """``emolens predict --engine ray``: label ``files`` on the connected cluster; returns (one FileResult per file,
    in the order given; the model's classes). ``options``: :func:`predict_dataset`'s. The files are read by the
    actors, so on a multi-node cluster they must be on storage every node sees. ``on_progress(n)``: n more files
    done. With ``annotate_dir``, each file is also drawn to ``annotate_dir / annotated_names[i]``."""
    ray = require_ray()
    items = [{"index": i, "path": str(p)} for i, p in enumerate(files)]
    if annotate_dir is not None:
        if annotated_names is None or len(annotated_names) != len(files):
            raise ValueError("annotate_dir needs one annotated name per file")
        for item, name in zip(items, annotated_names, strict=True):
            item["annotated"] = name
    if not items:
        return [], tuple(CLASSES)
    # a block is one unit of work (and of retry): at least a few per worker so that every worker is busy
    workers = options.pop("workers", None) or cluster_cpus()
    blocks = min(len(items), max(-(-len(items) // max(1, options.get("batch_size", 16))), 4 * workers))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    labelled = predict_dataset(ds, workers=workers, keep_empty=True, annotate_dir=annotate_dir, **options)
    by_index: dict[int, list[dict[str, Any]]] = {}
    classes: tuple[str, ...] | None = None
    for batch in labelled.iter_batches(batch_size=None, batch_format="numpy"):
        if classes is None:
            classes = tuple(k[2:] for k in batch if k.startswith("p_"))
        keys = list(batch)
        fresh = 0
        for j in range(len(batch["index"])):
            i = int(batch["index"][j])
            fresh += i not in by_index
            by_index.setdefault(i, []).append({k: batch[k][j] for k in keys})
        if on_progress is not None and fresh:
            on_progress(fresh)
    classes = classes or tuple(CLASSES)
    results = []
    for i, p in enumerate(files):
        rows = by_index.get(i, [])
        error = next((str(r["error"]) for r in rows if r["error"]), "")
        if not rows:
            error = f"{p}: no result from the cluster"
        size = (int(rows[0]["width"]), int(rows[0]["height"])) if rows else (0, 0)
        results.append(FileResult(str(p), [] if error else _faces_of([r for r in rows if r["face"] >= 0], classes),
                                  error, size))
    return results, classes


# ---------------------------------------------------------------------------------------------- videos

#: Files of a video job's folder; ``summary.json`` is written last and marks the folder complete.
VIDEO_OUTPUTS = {"csv": "timeline.csv", "plot": "timeline.png", "video": "annotated.mp4"}
SUMMARY = "summary.json"
#: Written when a job starts (its video and options): the folder is then the job's own, to redo after a kill.
JOB_MARKER = "job.json"


@dataclass
class VideoJob:
    """One video of :func:`run_video_jobs` and the folder its outputs go to."""

    source: str
    folder: Path

    @property
    def summary_path(self) -> Path:
        return self.folder / SUMMARY


def video_jobs(sources: Sequence[str], out_dir: str | Path = "runs/video") -> list[VideoJob]:
    """A job per video, each with its own folder ``out_dir/<file stem>``; videos whose stems collide get a short
    hash of their full path appended, so a folder always belongs to the same video whatever else is listed."""
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s.split("?")[0]).stem) or "stream" for s in sources]
    jobs = []
    for s, name in zip(sources, names, strict=True):
        if names.count(name) > 1:
            key = s if "://" in s else str(Path(s).resolve())
            name = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        jobs.append(VideoJob(s, Path(out_dir) / name))
    return jobs


def _source_identity(source: str) -> dict[str, Any]:
    p = Path(source)
    if "://" not in source and p.is_file():
        st = p.stat()
        return {"source": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"source": source}


def job_is_complete(job: VideoJob, settings: dict[str, Any]) -> bool:
    """True when the job's summary.json says it finished with these ``settings`` on this very file (same size and
    modification time) and every output it lists is there."""
    try:
        summary = json.loads(job.summary_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or summary.get("settings") != settings:
        return False
    if summary.get("identity") != _source_identity(job.source):
        return False
    return all(Path(p).is_file() for p in summary.get("outputs", {}).values())


def _owned_by(folder: Path, source: str) -> bool:
    """Whether ``folder`` may hold ``source``'s job: new, empty (hidden temp files aside), or holding that video's
    job marker or summary (a run of this engine, finished or killed). Anything else there is another command's
    (``emolens video x.mp4`` writes ``runs/video/x/`` too) or the user's, and is never written over."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    if not names:
        return True
    for name in (JOB_MARKER, SUMMARY):
        try:
            doc = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("identity", {}).get("source") == _source_identity(source)["source"]:
            return True
    return False


def claim_job_folder(job: VideoJob) -> VideoJob:
    """``job`` with the folder it writes: its own (:func:`_owned_by`) ``out_dir/<name>``, else the first of
    ``<name>-2``, ``<name>-3``... that is, so a job never writes over files it did not make."""
    for k in range(1, 1000):
        folder = job.folder if k == 1 else job.folder.with_name(f"{job.folder.name}-{k}")
        if _owned_by(folder, job.source):
            return VideoJob(job.source, folder)
    raise OSError(f"{job.folder}: 1000 folders of this name hold other files; give another --out-dir")


def run_video_job(job: VideoJob, settings: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """Process one video into its folder (the task each Ray worker runs; also the local engine's loop body).

    ``settings``: ``annotate`` (write annotated.mp4), ``max_frames``, ``draw_bars`` and the
    :class:`emolens.video.VideoProcessor` options (model, runtime, detector, smooth, ...). Returns
    ``{"source", "status": "done" | "skipped" | "failed", "folder", "error"?, ...}``; never raises for a bad video."""
    from .checkpoint import atomic_write_bytes

    try:
        job = claim_job_folder(job)
    except OSError as e:
        return {"source": job.source, "folder": str(job.folder), "status": "failed", "error": str(e)}
    base = {"source": job.source, "folder": str(job.folder)}
    if job_is_complete(job, settings):
        return {**base, "status": "skipped"}
    try:
        from .predict import EmotionRecognizer
        from .video import VideoProcessor, process_video

        job.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(job.folder / JOB_MARKER, (json.dumps(
            {"identity": _source_identity(job.source), "settings": settings}, indent=2) + "\n").encode())
        # an old summary must not vouch for outputs being rewritten (a killed run's temp files are process_video's
        # to clear: emolens.outputs.remove_stale_temp_files)
        job.summary_path.unlink(missing_ok=True)
        proc_kw = {k: v for k, v in settings.items() if k not in ("annotate", "max_frames", "draw_bars")}
        notes: list[str] = []
        rec = EmotionRecognizer(model=proc_kw.pop("model", None), runtime=proc_kw.pop("runtime", "auto"),
                                detector=proc_kw.pop("detector", "auto"), tta="none", threads=threads)
        proc = VideoProcessor.from_recognizer(rec, warn=notes.append, **proc_kw)
        res = process_video(job.source, job.folder / VIDEO_OUTPUTS["video"] if settings.get("annotate") else None,
                            job.folder / VIDEO_OUTPUTS["csv"], job.folder / VIDEO_OUTPUTS["plot"], processor=proc,
                            max_frames=int(settings.get("max_frames", 0)), progress=False,
                            draw_bars=bool(settings.get("draw_bars", True)), log=notes.append)
    except Exception as e:  # noqa: BLE001 - reported by name; the other videos go on
        return {**base, "status": "failed", "error": str(e) if isinstance(e, ValueError | OSError)
                else f"{type(e).__name__}: {e}"}
    summary = {"identity": _source_identity(job.source), "settings": settings, "outputs": res.outputs,
               "frames": res.frames, "expected_frames": res.expected_frames, "fps": res.fps, "tracks": res.tracks,
               "rows": res.rows, "complete": res.complete, "smoothing": res.smoothing,
               "seconds": round(res.seconds, 3), "notes": notes}
    atomic_write_bytes(job.summary_path, (json.dumps(summary, indent=2) + "\n").encode())
    return {**base, "status": "done", "frames": res.frames, "tracks": res.tracks, "rows": res.rows,
            "complete": res.complete, "processing_fps": res.processing_fps, "outputs": res.outputs, "notes": notes}


def run_video_jobs(jobs: Sequence[VideoJob], settings: dict[str, Any], *, engine: str = "ray",
                   workers: int | None = None, cpus_per_task: float = 1.0,
                   on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every job: ``engine="ray"`` as parallel tasks on the connected cluster (at most ``workers`` at once,
    default one per cluster CPU; a task whose worker dies is retried by Ray), ``"local"`` one after another in
    this process. ``on_result`` sees each result as it comes; returns the results in the jobs' order."""
    if engine == "local":
        results = []
        for job in jobs:
            results.append(run_video_job(job, settings, threads=0))
            if on_result is not None:
                on_result(results[-1])
        return results
    ray = require_ray()
    task = ray.remote(num_cpus=cpus_per_task, max_retries=3)(run_video_job)
    limit = workers or max(1, int(cluster_cpus() / cpus_per_task))
    pending = list(enumerate(jobs))
    running: dict[Any, int] = {}
    out: dict[int, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < limit:
            i, job = pending.pop(0)
            running[task.remote(job, settings, max(1, int(cpus_per_task)))] = i
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            i = running.pop(ref)
            try:
                out[i] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the worker died more often than Ray retries
                out[i] = {"source": jobs[i].source, "folder": str(jobs[i].folder), "status": "failed",
                          "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            if on_result is not None:
                on_result(out[i])
    return [out[i] for i in range(len(jobs))]


__all__ = ["predict_dataset", "predict_files", "FileResult", "FaceLabeller", "connect", "cluster_cpus",
           "require_ray", "ClusterError", "INSTALL_HINT", "VideoJob", "video_jobs", "job_is_complete",
           "claim_job_folder", "run_video_job", "run_video_jobs", "VIDEO_OUTPUTS", "SUMMARY", "JOB_MARKER"]
