"""``emolens bench predict --detector-quality``: recall and false hits of each face detector on synthetic frames
made from real photos, on FER2013 faces (and how well its crops classify, per margin), on face-free photos."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..results import Result
from .common import ASSETS, time_call

#: (file inside matplotlib's sample data or emolens assets, face box x, y, w, h) of the real photos used
_PHOTOS = (("emolens:astronaut.jpg", (176, 65, 96, 96)), ("matplotlib:grace_hopper.jpg", (155, 120, 222, 222)))
#: skimage.data images without a face (skipped when scikit-image is not installed)
_NEGATIVES = ("coffee", "chelsea", "rocket", "hubble_deep_field", "coins", "horse", "page", "text", "brick", "grass",
              "gravel", "clock", "retina", "moon", "immunohistochemistry", "cell", "colorwheel")


def _photo(spec: str) -> np.ndarray:
    from ..predict import read_image

    where, name = spec.split(":")
    if where == "emolens":
        return read_image(ASSETS / name)
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


@dataclass
class DetectorQuality(Result):
    """One detector's row of ``emolens bench predict --detector-quality`` (see :func:`bench_detector_quality`):
    hits, totals and false hits per test set, recall by face width (``by_size``: {width: [found, total]}), the
    FER2013 classification accuracy of its crops per margin (``fer_accuracy``) against FER2013's own crops
    (``fer_reference``), the crop square's overlap with FER2013's (``fer_framing``), and its speed."""

    detector: str
    synthetic_found: int
    synthetic_total: int
    synthetic_false: int
    negative_false: int
    negative_images: int
    margin: float
    by_size: dict[int, list[int]]
    fer_found: int | None = None
    fer_total: int = 0
    fer_false: int | None = None
    fer_accuracy: dict[str, float] = field(default_factory=dict)
    fer_reference: float | None = None
    fer_framing: dict[str, float] = field(default_factory=dict)
    # eye alignment, at the detector's margin, on the upright FER2013 faces and on the same faces tilted 10-25
    # degrees either way: {"upright"|"tilted": {column of alignment_modes(): accuracy}}, the last column being
    # what the package does (faces.ALIGN_MIN_DEG); and how many tilted faces were found
    fer_alignment: dict[str, dict[str, float]] = field(default_factory=dict)
    fer_tilted_found: int | None = None
    ms_per_frame: float = 0.0         # 640x480
    ms_per_hd_frame: float = 0.0      # 1920x1080


def alignment_modes() -> dict[str, float]:
    """Column name -> the ``min_tilt`` of :func:`~emolens.faces.face_crops`: never level, level every face, and
    level only faces tilted by :data:`~emolens.faces.ALIGN_MIN_DEG` or more (the package's behaviour)."""
    from ..faces import ALIGN_MIN_DEG

    return {"unaligned": math.inf, "aligned, any tilt": 0.0, f"aligned >= {ALIGN_MIN_DEG:g} deg": ALIGN_MIN_DEG}


def _alignment_accuracy(det, clf, frames: list, labels: list[list[int]]) -> tuple[int, dict[str, float]]:
    """How many faces of ``frames`` ``det`` finds, and the shipped model's accuracy (no TTA) on its crops at its
    own margin under each of :func:`alignment_modes` (what levelling the eyes buys)."""
    from ..faces import face_crops

    modes = alignment_modes()
    found, ys, crops = 0, [], {k: [] for k in modes}
    for (frame, truths), lab in zip(frames, labels, strict=True):
        dets = det.detect_faces(frame)
        pairs = _pairs(dets, truths)
        found += len(pairs)
        if pairs:
            ys += [lab[t] for t, _ in pairs]
            for k, t in modes.items():
                crops[k].append(face_crops(frame, [dets[i] for _, i in pairs], det.margin, True, min_tilt=t))
    y = np.asarray(ys)
    acc = {k: float((clf.predict_proba(np.concatenate(c), tta="none").argmax(1) == y).mean())
           for k, c in crops.items() if c}
    return found, acc


#: face widths (px) of the synthetic recall-by-size frames
FACE_SIZES = (24, 40, 64, 110, 180, 300)
#: crop margins tried on the FER2013 faces each detector re-finds (the one that classifies best is its margin)
MARGINS = (0.0, 0.1, 0.15, 0.2, 0.3)


def bench_detector_quality(names: list[str] | None = None, data: str | Path | None = None, fer_faces: int = 600,
                           seed: int = 0, margins: tuple[float, ...] = MARGINS) -> list[DetectorQuality]:
    """Recall and false hits of each detector on: 100 synthetic 640x480 frames made from two real photos (the
    astronaut, Grace Hopper) with the face 24-300 px wide (recall per size in ``by_size``), heads tilted
    -30..30 degrees, dark, bright, blurred, JPEG q15, noisy, mirrored; ``fer_faces`` FER2013 PublicTest faces
    (upscaled to 144 px, 12 per frame; skipped without the data), whose re-found crops are classified by the
    shipped model at each of ``margins`` with and without eye alignment (``fer_accuracy``: how well the
    detector's crops match FER2013's framing; ``fer_reference``: the same faces as FER2013 crops them); 17
    face-free scikit-image photos. Plus ms per 640x480 and per 1920x1080 frame."""
    import cv2

    from ..faces import available_detectors, create_detector, face_crops

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
    fer, fer_tilted = [], []
    fer_labels: list[list[int]] = []
    fer_reference = None
    try:
        from ..data import default_data_path, load_dataset

        public = load_dataset(data if data is not None else default_data_path()).split("public")
        pick = rng.choice(len(public.images), min(fer_faces, len(public.images)), replace=False)
        for k in range(0, len(pick), 12):
            frame = np.clip(rng.normal(110, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
            tilted = frame.copy()
            truths = []
            for j, i in enumerate(pick[k:k + 12]):
                r, c = divmod(j, 4)
                face = cv2.resize(public.images[i], (144, 144), interpolation=cv2.INTER_CUBIC)
                frame[r * 160 + 8:r * 160 + 152, c * 160 + 8:c * 160 + 152] = face[:, :, None]
                angle = float(rng.uniform(10, 25) * rng.choice([-1, 1]))  # a head tilted as people tilt it
                turn = cv2.getRotationMatrix2D((71.5, 71.5), angle, 1.0)
                tilted[r * 160 + 8:r * 160 + 152, c * 160 + 8:c * 160 + 152] = cv2.warpAffine(
                    face, turn, (144, 144), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)[:, :, None]
                truths.append((c * 160 + 80, r * 160 + 80, 120))
            fer.append((frame, truths))
            fer_tilted.append((tilted, truths))
            fer_labels.append([int(public.labels[i]) for i in pick[k:k + 12]])
    except (OSError, ValueError):  # DataError is a ValueError: no FER2013 here
        pass
    clf = None
    if fer and margins:
        from ..runtime import ModelError, load_classifier

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
                found_tilted, tilted_acc = _alignment_accuracy(det, clf, fer_tilted, fer_labels)
                row.update(fer_tilted_found=found_tilted, fer_alignment={
                    "upright": _alignment_accuracy(det, clf, fer, fer_labels)[1], "tilted": tilted_acc})
        row["ms_per_frame"] = 1000 * time_call(lambda d=det: d.detect(synthetic[0][0]), 1.0)
        row["ms_per_hd_frame"] = 1000 * time_call(lambda d=det: d.detect(hd), 1.0, min_repeats=3, warmup=1)
        rows.append(DetectorQuality(**row))
    return rows


def format_detector_quality(rows: list[DetectorQuality]) -> str:
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
    align_rows = [r for r in rows if r.get("fer_alignment")]
    if align_rows:
        keys = list(alignment_modes())
        lines += ["", "Eye alignment: accuracy (shipped model, no TTA) of the crops at the detector's margin on the "
                  "FER2013 faces it re-found, upright and tilted 10-25 degrees either way; the last column is what "
                  "the package does", "",
                  f"| detector (margin) | faces | found | {' | '.join(keys)} |", "|---|---|---:|" + "---:|" * len(keys)]
        for r in align_rows:
            for pose, found in (("upright", r["fer_found"]), ("tilted", r["fer_tilted_found"])):
                t = r["fer_alignment"].get(pose, {})
                cells = [f"{t[k]:.1%}" if k in t else "-" for k in keys]
                lines.append(f"| {r['detector']} ({r['margin']:g}) | {pose} | {found}/{r['fer_total']} | "
                             f"{' | '.join(cells)} |")
    return "\n".join(lines)
