"""Speed measurements behind ``emolens bench``: the classifier per runtime (torch, ONNX fp32, ONNX int8) at batch
1 and batched, with and without TTA, the face detectors per 640x480 frame, training, the batch engines, and the
HTTP API under load (``bench_serve``: concurrent clients, optionally during a slow-client attack). Other stages
add their own ``bench_*`` functions here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def time_call(fn: Callable[[], Any], min_time: float = 1.0, min_repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds per call of ``fn`` over at least ``min_repeats`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sample_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A (height, width, 3) BGR frame with the bundled astronaut photo (one face) scaled to the frame height."""
    import cv2

    from .predict import read_image

    photo = read_image(Path(__file__).with_name("assets") / "astronaut.jpg")
    photo = cv2.resize(photo, (height * photo.shape[1] // photo.shape[0], height), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 96, np.uint8)
    x = max(0, (width - photo.shape[1]) // 2)
    frame[:, x:x + photo.shape[1]] = photo[:, :width]
    return frame


def sample_faces(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) uint8: the astronaut's face crop with noise, so every input differs a little."""
    from .faces import create_detector, face_crops

    frame = sample_frame()
    dets = create_detector("haar").detect_faces(frame)[:1]
    base = face_crops(frame, dets)[0] if dets else np.full((48, 48), 128, np.uint8)
    noise = np.random.default_rng(seed).integers(-8, 9, (n, 48, 48))
    return np.clip(base[None].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def calibration_faces(n: int = 512) -> np.ndarray:
    """int8 calibration faces: FER2013 training faces when the data is there, else noisy copies of the sample
    face (speed is the same; only accuracy would suffer)."""
    from .data import DataError, default_data_path, load_dataset

    try:
        train = load_dataset(default_data_path()).split("train")
    except (DataError, OSError):
        return sample_faces(n)
    return train.images[np.random.default_rng(0).choice(len(train.images), min(n, len(train.images)), False)]


def bench_classifier(clf, tta: str, batch: int = 64, min_time: float = 1.0) -> dict[str, float]:
    """ms per face at batch 1 and faces/s at ``batch`` for a :class:`emolens.runtime.Classifier`."""
    faces = sample_faces(batch)
    one = time_call(lambda: clf.predict_proba(faces[:1], tta=tta), min_time)
    many = time_call(lambda: clf.predict_proba(faces, tta=tta, batch_size=batch), min_time)
    return {"ms_per_face_b1": 1000 * one, "faces_per_s": batch / many}


def bench_detectors(names: list[str] | None = None, min_time: float = 1.0) -> list[dict[str, Any]]:
    """ms per 640x480 frame and faces found, for each detector that is installed."""
    from .faces import DetectorError, available_detectors, create_detector

    frame = sample_frame()
    rows = []
    for name in names or available_detectors():
        try:
            det = create_detector(name)
        except DetectorError as e:
            rows.append({"detector": name, "error": str(e)})
            continue
        found = len(det.detect(frame))
        rows.append({"detector": name, "ms_per_frame": 1000 * time_call(lambda d=det: d.detect(frame), min_time),
                     "faces": found})
    return rows


def _threads() -> dict[str, int]:
    out = {"cpus": os.cpu_count() or 0}
    try:
        import torch

        out["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


def bench_predict(model: str | Path | None = None, batch: int = 64, ttas: tuple[str, ...] = ("flip", "none"),
                  threads: int = 0, min_time: float = 1.0, detectors: list[str] | None = None) -> dict[str, Any]:
    """The classifier under every runtime available (torch needs the ``.pt`` twin of the model; int8 is made
    here in a temporary folder) with each TTA mode, and the detectors. Returns {"classifier": rows,
    "detectors": rows, "threads": {...}, "batch": batch}."""
    from .runtime import ModelError, OnnxClassifier, TorchClassifier, default_model_path

    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    model = Path(model) if model is not None else None
    onnx_path = default_model_path("onnx") if model is None else model if model.suffix == ".onnx" else None
    pt_path = default_model_path("pt") if model is None else model if model.suffix == ".pt" else None
    if model is not None and onnx_path is None and pt_path is None:
        raise ModelError(f"{model}: give a .onnx or .pt model")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None and pt_path is not None and pt_path.exists():
            from .export import export_onnx

            onnx_path = Path(export_onnx(pt_path, Path(tmp) / "model.onnx")["path"])
        clfs: list[tuple[str, Callable[[], Any]]] = []
        if pt_path is not None and pt_path.exists():
            clfs.append(("torch fp32", lambda: TorchClassifier(pt_path)))
        if onnx_path is not None and onnx_path.exists():
            from .export import quantize_int8

            int8 = quantize_int8(onnx_path, Path(tmp) / "model.int8.onnx", calibration_faces())
            clfs.append(("onnx fp32", lambda: OnnxClassifier(onnx_path, threads)))
            clfs.append(("onnx int8", lambda: OnnxClassifier(int8, threads)))
        if not clfs:
            raise ModelError(f"{model or default_model_path('onnx')}: no such model file")
        for name, make in clfs:
            try:
                clf = make()
            except (ImportError, ModelError) as e:
                rows.append({"runtime": name, "error": str(e)})
                continue
            for tta in ttas:
                rows.append({"runtime": name, "tta": tta, **bench_classifier(clf, tta, batch, min_time)})
    default = bench_default(batch, threads, min_time) if model is None else None
    return {"classifier": rows, "detectors": bench_detectors(detectors, min_time), "threads": _threads(),
            "batch": batch, "onnx_threads": threads or "default (all cores)", "default": default}


def bench_default(batch: int = 64, threads: int = 0, min_time: float = 1.0) -> dict[str, Any]:
    """faces/s of exactly what ``EmotionRecognizer()`` and ``emolens predict`` classify with out of the box
    (shipped model, default runtime and TTA), on ``batch`` faces at a time."""
    from .predict import EmotionRecognizer

    clf = EmotionRecognizer(detect=False, threads=threads)
    session = getattr(clf.classifier, "session", None)
    meta = session.get_modelmeta().custom_metadata_map if session is not None else {}
    precision = "int8" if "emolens.quantization" in meta else "fp32"
    return {"runtime": clf.classifier.runtime, "precision": precision, "tta": clf.tta,
            **bench_classifier(clf.classifier, clf.tta, batch, min_time)}


def format_predict(result: dict[str, Any]) -> str:
    """Plain-text tables of :func:`bench_predict`'s result (pasteable in a README)."""
    th = result["threads"]
    lines = [f"CPU cores: {th['cpus']}; torch threads: {th.get('torch', '-')}; onnxruntime intra-op threads: "
             f"{result['onnx_threads']}", "",
             f"| runtime | TTA | ms/face (batch 1) | faces/s (batch {result['batch']}) |", "|---|---|---:|---:|"]
    for r in result["classifier"]:
        if "error" in r:
            lines.append(f"| {r['runtime']} | - | {r['error']} | |")
        else:
            lines.append(f"| {r['runtime']} | {r['tta']} | {r['ms_per_face_b1']:.2f} | {r['faces_per_s']:.0f} |")
    d = result.get("default")
    if d:
        lines += ["", f"default ({d['runtime']} {d['precision']}, tta {d['tta']}): {d['faces_per_s']:.0f} faces/s "
                      f"at batch {result['batch']}"]
    lines += ["", "| detector | ms per 640x480 frame | faces found |", "|---|---:|---:|"]
    for r in result["detectors"]:
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['error']} | |")
        else:
            lines.append(f"| {r['detector']} | {r['ms_per_frame']:.1f} | {r['faces']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- detector quality

#: (file inside matplotlib's sample data or emolens assets, face box x, y, w, h) of the real photos used
_PHOTOS = (("emolens:astronaut.jpg", (176, 65, 96, 96)), ("matplotlib:grace_hopper.jpg", (155, 120, 222, 222)))
#: skimage.data images without a face (skipped when scikit-image is not installed)
_NEGATIVES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "coins", "horse", "page", "text", "brick", "grass",
              "gravel", "clock", "retina", "moon", "immunohistochemistry", "cell", "colorwheel")


def _photo(spec: str) -> np.ndarray:
    from .predict import read_image

    where, name = spec.split(":")
    if where == "emolens":
        return read_image(Path(__file__).with_name("assets") / name)
    import matplotlib

    return read_image(Path(matplotlib.get_data_path()) / "sample_data" / name)


def _place(rng, photo: np.ndarray, box, face_w: int, angle: float = 0.0, gamma: float = 1.0, blur: float = 0.0,
           jpeg: int = 0, noise: float = 0.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 640x480 noisy frame with ``photo`` scaled so the face is ``face_w`` px wide, rotated by ``angle``, at a
    random place; returns (frame, (face centre x, y, face width))."""
    import cv2

    x, y, w, h = box
    s = face_w / w
    im = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    cx, cy = (x + w / 2) * s, (y + h / 2) * s
    if angle:
        im = cv2.warpAffine(im, cv2.getRotationMatrix2D((cx, cy), angle, 1.0), (im.shape[1], im.shape[0]),
                            borderMode=cv2.BORDER_REFLECT)
    frame = np.clip(rng.normal(110, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
    px = rng.uniform(face_w * 0.7, 640 - face_w * 0.7) if face_w * 1.4 < 640 else 320
    py = rng.uniform(face_w * 0.7, 480 - face_w * 0.7) if face_w * 1.4 < 480 else 240
    ox, oy = int(px - cx), int(py - cy)
    xs, ys, xd, yd = max(0, -ox), max(0, -oy), max(0, ox), max(0, oy)
    ww, hh = min(im.shape[1] - xs, 640 - xd), min(im.shape[0] - ys, 480 - yd)
    frame[yd:yd + hh, xd:xd + ww] = im[ys:ys + hh, xs:xs + ww]
    if gamma != 1.0:
        frame = (255 * (frame / 255.0) ** gamma).astype(np.uint8)
    if blur:
        frame = cv2.GaussianBlur(frame, (0, 0), blur)
    if noise:
        frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
    if jpeg:
        frame = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg])[1], cv2.IMREAD_COLOR)
    return frame, (px, py, face_w)


def _pairs(dets, truths) -> list[tuple[int, int]]:
    """(truth index, detection index) of each true face found: a hit counts when its centre is within half a
    face of a true face and its size is 0.45-2.2x the true face's."""
    used: set[int] = set()
    pairs = []
    for t, (gx, gy, gs) in enumerate(truths):
        for i, d in enumerate(dets):
            bx, by, bw, bh = d.box
            if i not in used and abs(bx + bw / 2 - gx) < gs / 2 and abs(by + bh / 2 - gy) < gs / 2 \
                    and 0.45 < bw / gs < 2.2:
                used.add(i)
                pairs.append((t, i))
                break
    return pairs


def _match(dets, truths) -> tuple[int, int]:
    """(found, false hits) of ``dets`` against ``truths`` (see :func:`_pairs`)."""
    found = len(_pairs(dets, truths))
    return found, len(dets) - found


def _square_iou(ax: float, ay: float, aside: float, bx: float, by: float, bside: float) -> float:
    """IoU of two axis-aligned squares given by centre and side."""
    iw = max(0.0, min(ax + aside / 2, bx + bside / 2) - max(ax - aside / 2, bx - bside / 2))
    ih = max(0.0, min(ay + aside / 2, by + bside / 2) - max(ay - aside / 2, by - bside / 2))
    return iw * ih / (aside ** 2 + bside ** 2 - iw * ih)


#: face widths (px) of the synthetic recall-by-size frames
FACE_SIZES = (24, 40, 64, 110, 180, 300)
#: crop margins tried on the FER2013 faces each detector re-finds (the one that classifies best is its margin)
MARGINS = (0.0, 0.1, 0.15, 0.2, 0.3)


def bench_detector_quality(names: list[str] | None = None, data: str | Path | None = None, fer_faces: int = 600,
                           seed: int = 0, margins: tuple[float, ...] = MARGINS) -> list[dict[str, Any]]:
    """Recall and false hits of each detector on: 100 synthetic 640x480 frames made from two real photos (the
    astronaut, Grace Hopper) with the face 24-300 px wide (recall per size in ``by_size``), heads tilted
    -30..30 degrees, dark, bright, blurred, JPEG q15, noisy, mirrored; ``fer_faces`` FER2013 PublicTest faces
    (upscaled to 144 px, 12 per frame; skipped without the data), whose re-found crops are classified by the
    shipped model at each of ``margins`` with and without eye alignment (``fer_accuracy``: how well the
    detector's crops match FER2013's framing; ``fer_reference``: the same faces as FER2013 crops them); 17
    face-free scikit-image photos. Plus ms per 640x480 and per 1920x1080 frame."""
    import cv2

    from .faces import available_detectors, create_detector, face_crops

    rng = np.random.default_rng(seed)
    synthetic = []
    sizes: list[int] = []  # face width of each by-size frame, 0 for the others
    for spec, box in _PHOTOS:
        photo = _photo(spec)
        mirrored = (photo.shape[1] - box[0] - box[2], box[1], box[2], box[3])
        for fw in FACE_SIZES:
            synthetic += [_place(rng, photo, box, fw) for _ in range(3)]
            sizes += [fw] * 3
        sizes += [0] * (7 * 2 + 5 * 3 + 3)
        for angle in (-30, -20, -10, 0, 10, 20, 30):
            synthetic += [_place(rng, photo, box, 110, angle=angle) for _ in range(2)]
        for kw in ({"gamma": 2.2}, {"gamma": 0.45}, {"blur": 2.0}, {"jpeg": 15}, {"noise": 20.0}):
            synthetic += [_place(rng, photo, box, 110, **kw) for _ in range(3)]
        synthetic += [_place(rng, np.ascontiguousarray(photo[:, ::-1]), mirrored, 110) for _ in range(3)]
    assert len(sizes) == len(synthetic)
    fer = []
    fer_labels: list[list[int]] = []
    fer_reference = None
    try:
        from .data import default_data_path, load_dataset

        public = load_dataset(data if data is not None else default_data_path()).split("public")
        pick = rng.choice(len(public.images), min(fer_faces, len(public.images)), replace=False)
        for k in range(0, len(pick), 12):
            frame = np.clip(rng.normal(110, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
            truths = []
            for j, i in enumerate(pick[k:k + 12]):
                r, c = divmod(j, 4)
                face = cv2.resize(public.images[i], (144, 144), interpolation=cv2.INTER_CUBIC)
                frame[r * 160 + 8:r * 160 + 152, c * 160 + 8:c * 160 + 152] = face[:, :, None]
                truths.append((c * 160 + 80, r * 160 + 80, 120))
            fer.append((frame, truths))
            fer_labels.append([int(public.labels[i]) for i in pick[k:k + 12]])
    except (OSError, ValueError):  # DataError is a ValueError: no FER2013 here
        pass
    clf = None
    if fer and margins:
        from .runtime import ModelError, load_classifier

        try:
            clf = load_classifier(None, "onnx")
            ref = clf.predict_proba(public.images[pick], tta="none").argmax(1)
            fer_reference = float((ref == public.labels[pick]).mean())
        except (ModelError, OSError):
            clf = None
    negatives = []
    try:
        import skimage.data as skdata

        for name in _NEGATIVES:
            im = np.asarray(getattr(skdata, name)())
            if im.dtype != np.uint8:
                im = (255 * (im.astype(float) / max(1e-9, float(im.max())))).astype(np.uint8)
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else im[:, :, 2::-1]
            negatives.append(cv2.resize(np.ascontiguousarray(im), (640, 480), interpolation=cv2.INTER_AREA))
    except ImportError:
        pass
    hd = cv2.resize(synthetic[0][0], (1920, 1080), interpolation=cv2.INTER_LINEAR)
    rows = []
    for name in names or available_detectors():
        det = create_detector(name)
        matches = [_match(det.detect_faces(f), [t]) for f, t in synthetic]
        found, false = map(sum, zip(*matches, strict=True))
        row: dict[str, Any] = {"detector": name, "synthetic_found": found, "synthetic_total": len(synthetic),
                               "synthetic_false": false, "fer_found": None, "fer_total": 0, "fer_false": None,
                               "negative_false": sum(len(det.detect(n)) for n in negatives),
                               "negative_images": len(negatives), "margin": det.margin,
                               "by_size": {fw: [sum(m[0] for m, s in zip(matches, sizes, strict=True) if s == fw),
                                                sizes.count(fw)] for fw in FACE_SIZES},
                               "fer_accuracy": {}, "fer_reference": fer_reference}
        if fer:
            f_found = f_false = 0
            crops: dict[tuple[float, bool], list[np.ndarray]] = {(m, a): [] for m in margins for a in (False, True)}
            framing: dict[float, list[float]] = {m: [] for m in margins}
            labels: list[int] = []
            for (frame, truths), lab in zip(fer, fer_labels, strict=True):
                dets = det.detect_faces(frame)
                pairs = _pairs(dets, truths)
                f_found += len(pairs)
                f_false += len(dets) - len(pairs)
                for t, i in pairs:  # the crop square against the FER2013 crop's own 144 px square
                    x, y, w, h = dets[i].box
                    gx, gy, _ = truths[t]
                    for m in margins:
                        side = max(w, h) * (1 + m)
                        framing[m].append(_square_iou(x + w / 2, y + h / 2, side, gx, gy, 144.0))
                if clf is None or not pairs:
                    continue
                labels += [lab[t] for t, _ in pairs]
                for (m, a), out in crops.items():
                    out.append(face_crops(frame, [dets[i] for _, i in pairs], m, a))
            row.update(fer_found=f_found, fer_total=sum(len(t) for _, t in fer), fer_false=f_false,
                       fer_framing={f"{m:g}": float(np.mean(v)) for m, v in framing.items() if v})
            if clf is not None and labels:
                y = np.asarray(labels)
                row["fer_accuracy"] = {f"{m:g}{' aligned' if a else ''}": float(
                    (clf.predict_proba(np.concatenate(c), tta="none").argmax(1) == y).mean()) for (m, a), c in
                    crops.items()}
        row["ms_per_frame"] = 1000 * time_call(lambda d=det: d.detect(synthetic[0][0]), 1.0)
        row["ms_per_hd_frame"] = 1000 * time_call(lambda d=det: d.detect(hd), 1.0, min_repeats=3, warmup=1)
        rows.append(row)
    return rows


def format_detector_quality(rows: list[dict[str, Any]]) -> str:
    """Markdown tables of :func:`bench_detector_quality`: recall, false hits and speed; then, with FER2013,
    the accuracy of each detector's crops per margin."""
    import os

    sizes = list(rows[0]["by_size"]) if rows else []
    lines = [f"CPU cores: {os.cpu_count()}", "",
             "| detector | ms per 640x480 frame | ms per 1920x1080 frame | found by face width "
             f"{' / '.join(map(str, sizes))} px | synthetic: found | FER2013 faces: found | false hits: synthetic / "
             "FER frames / face-free photos |", "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        fer = f"{r['fer_found']}/{r['fer_total']} ({r['fer_found'] / r['fer_total']:.1%})" if r["fer_total"] else "-"
        by_size = " / ".join(f"{f}/{n}" for f, n in r["by_size"].values())
        lines.append(f"| {r['detector']} | {r['ms_per_frame']:.1f} | {r['ms_per_hd_frame']:.0f} | {by_size} | "
                     f"{r['synthetic_found']}/{r['synthetic_total']} | {fer} | {r['synthetic_false']} / "
                     f"{r['fer_false'] if r['fer_total'] else '-'} / {r['negative_false']} (of "
                     f"{r['negative_images']}) |")
    framing_rows = [r for r in rows if r.get("fer_framing")]
    if framing_rows:
        keys = list(framing_rows[0]["fer_framing"])
        lines += ["", "FER2013 framing: mean IoU of each detector's square crop (side = box side x (1 + margin)) with "
                  "the FER2013 crop of the faces it re-found, by margin (the best is the detector's margin)", "",
                  f"| detector (margin in use) | {' | '.join(keys)} |", "|---|" + "---:|" * len(keys)]
        for r in framing_rows:
            best = max(r["fer_framing"].values())
            cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in r["fer_framing"].values()]
            lines.append(f"| {r['detector']} ({r['margin']:g}) | {' | '.join(cells)} |")
    acc_rows = [r for r in rows if r.get("fer_accuracy")]
    if acc_rows:
        keys = list(acc_rows[0]["fer_accuracy"])
        ref = acc_rows[0].get("fer_reference")
        lines += ["", "FER2013 accuracy (shipped model, no TTA) of each detector's crops of the faces it re-found, by "
                  "crop margin" + (f"; the same faces as FER2013 crops them: {ref:.1%}" if ref is not None else ""),
                  "", f"| detector (margin in use) | {' | '.join(keys)} |", "|---|" + "---:|" * len(keys)]
        for r in acc_rows:
            best = max(r["fer_accuracy"].values())
            cells = [f"**{v:.1%}**" if v == best else f"{v:.1%}" for v in r["fer_accuracy"].values()]
            lines.append(f"| {r['detector']} ({r['margin']:g}) | {' | '.join(cells)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- training speed


def bench_train(model: str = "cnn_lstm", model_kwargs: dict | None = None, batch: int = 128, rounds: int = 6,
                steps: int = 4, threads: int = 0) -> dict[str, Any]:
    """Training-step throughput in float32 and under bf16 autocast, measured in interleaved rounds
    (``steps`` steps of each mode per round, so load from other jobs hits both alike). A step is what
    ``train_one_epoch`` does: uint8 -> input, on-device augmentation, forward, float32 loss, backward,
    SGD step, on (batch, 1, 48, 48) channels-last input. Returns per-mode median img/s and their ratio."""
    import torch

    from .config import TrainConfig
    from .models import count_parameters, create_model
    from .train import _autocast, amp_enabled, augment_batch, cpu_has_fast_bf16, to_input

    if threads:
        torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    cfg = TrainConfig(model=model)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (batch,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    net = create_model(model, **(model_kwargs or {})).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    modes = {"fp32": False, "bf16": True} if amp_enabled(cpu, True) else {"fp32": False}

    def step(amp: bool) -> None:
        x = augment_batch(to_input(images).contiguous(memory_format=torch.channels_last), cfg, gen)
        with _autocast(cpu, amp):
            logits = net(x)
        loss = loss_fn(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for amp in modes.values():  # warm-up: oneDNN picks and caches its kernels per dtype
        step(amp)
        step(amp)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, amp in modes.items():
            t = time.perf_counter()
            for _ in range(steps):
                step(amp)
            rates[mode].append(steps * batch / (time.perf_counter() - t))
    out = {"model": model, "params": count_parameters(net), "batch": batch, "threads": torch.get_num_threads(),
           "cpu_fast_bf16": cpu_has_fast_bf16(), **{f"{m}_img_s": statistics.median(r) for m, r in rates.items()}}
    if "bf16_img_s" in out:
        out["ratio"] = out["bf16_img_s"] / out["fp32_img_s"]
    return out


def format_train(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`bench_train` results."""
    lines = ["| model | params | batch | threads | fp32 img/s | bf16 img/s | bf16 / fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bf16 = f"{r['bf16_img_s']:.0f}" if "bf16_img_s" in r else "no fast bf16 on this CPU"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['threads']} | "
                     f"{r['fp32_img_s']:.0f} | {bf16} | {ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- engines


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
                  batch_size: int = 4, detector: str = "auto", tta: str = "flip") -> dict[str, Any]:
    """images/s of ``emolens predict`` on ``images`` photos, in one run: the local engine (one process), then the
    Ray engine with each number of ``workers`` (emolens.cluster). Each figure includes loading the model (each
    Ray worker loads its own); starting the Ray cluster is timed apart. Returns {"rows", "images", ...}."""
    from .cluster import cluster_cpus, connect, predict_files
    from .predict import EmotionRecognizer

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
    return {"rows": rows, "images": images, "batch_size": batch_size, "cluster_cpus": cpus,
            "cluster": address or "local (started for the run)", "startup_s": startup, "cpus": os.cpu_count(),
            "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def format_engines(result: dict[str, Any]) -> str:
    """Markdown table of :func:`bench_engines`."""
    lines = [f"{result['images']} photos (640x480, one face), `emolens predict` with TTA flip; {result['cpu']}, "
             f"{result['cpus']} cores; Ray cluster: {result['cluster']}, {result['cluster_cpus']} CPUs, started in "
             f"{result['startup_s']:.1f} s (not counted); Ray batch size {result['batch_size']}", "",
             "| engine | workers | seconds | images/s | images/s per worker | faces |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / r['workers']:.1f} | {r['faces']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- HTTP load test


def bench_image(path: str | None = None) -> tuple[bytes, str]:
    """The image the load test sends: ``path``, else the packaged astronaut photo (512x512, one face)."""
    from .serve.inputs import image_format

    path = path or str(Path(__file__).with_name("assets") / "astronaut.jpg")
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
                endpoint: str = "/v1/predict", slow_clients: int = 0) -> dict[str, Any]:
    """Load test: ``clients`` concurrent clients POST an image for ``seconds`` against ``url`` (default: a
    local ``emolens serve`` started for the run); returns requests/s, p50/p95/p99 latency (ms), errors.
    ``slow_clients`` > 0: meanwhile that many connections dribble an endless request head (slowloris), so
    the latencies are those of normal requests during such an attack."""
    if clients < 1 or seconds <= 0 or slow_clients < 0:
        raise ValueError("--clients must be >= 1, --seconds > 0 and --slow-clients >= 0")
    from .serve.security import API_KEY_ENV
    from .serve.server import local_server

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
    result.update(image=what, image_bytes=len(payload), server=where)
    return result


def format_bench(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) or "none"
    attack = (f"  during a slow-client attack: {r['slow_clients']} connections dribbling request heads "
              f"({r['slow_opened']} opened, {r['slow_closed_by_server']} closed by the server)\n"
              if r.get("slow_clients") else "")
    return (f"{r['endpoint']} on {r['server']}: {r['clients']} clients for {r['seconds']} s, image {r['image']}\n"
            f"{attack}"
            f"  requests {r['requests']}  ok {r['ok']}  errors {r['errors']} ({kinds})\n"
            f"  throughput {r['requests_per_s']} requests/s\n"
            f"  latency ms  p50 {r['p50_ms']}  p95 {r['p95_ms']}  p99 {r['p99_ms']}  mean {r['mean_ms']}")
