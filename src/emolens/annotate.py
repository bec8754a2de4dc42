"""Drawing a photo's faces: boxes, labels and probability panels laid out so that no panel covers another
face or panel, and a visible mark when no face was found. Used by photos (``EmotionRecognizer.draw``), video
and the cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .results import Face

#: BGR colour per emotion, readable on photos.
COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (30, 200, 250),
    "neutral": (190, 190, 190), "sad": (200, 120, 40), "surprise": (40, 160, 250),
}


Rect = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive


@dataclass
class FaceLayout:
    """Where one face's annotations go (see :func:`annotation_layout`): the ``label`` rectangle (inside the
    image) with its text origin and font scale, and the probability ``panel`` rectangle with its font scale, or
    None when no free place beside the box holds even the smallest panel."""

    label: Rect
    text_origin: tuple[int, int]
    font_scale: float
    panel: Rect | None = None
    panel_scale: float = 0.0


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(r: Rect, width: int, height: int) -> bool:
    return r[0] >= 0 and r[1] >= 0 and r[2] <= width and r[3] <= height


def _panel_size(classes: Sequence[str], unit: float, scale: float) -> tuple[int, int, int, int, int]:
    """(width, height, row height, name width, bar width) of a probability panel at ``scale``."""
    import cv2

    bscale, bthick = 0.4 * unit * scale, max(1, round(unit * scale))
    (nw, nh), _ = cv2.getTextSize(max(classes, key=len), cv2.FONT_HERSHEY_SIMPLEX, bscale, bthick)
    row, bar_w = nh + max(3, round(4 * unit * scale)), max(24, round(60 * unit * scale))
    return nw + bar_w + 8, row * len(classes) + 2, row, nw, bar_w


#: panel sizes tried, largest first, before a panel is left out
PANEL_SCALES = (1.0, 0.8, 0.6)


def annotation_layout(faces: Sequence[Face], classes: Sequence[str], shape: tuple[int, ...],
                      bars: bool = True) -> list[FaceLayout]:
    """Place each face's label and probability panel in an image of ``shape`` (H, W[, C]).

    Labels go above the box (else below it, else inside its top), moved sideways to stay inside the image.
    A panel goes right of its box, else left, below or above, at the largest of :data:`PANEL_SCALES` that
    fits inside the image without covering any face's box, any label or another panel; a face whose
    neighbours leave no such place gets no panel (its label still says the emotion)."""
    import cv2

    height, width = shape[:2]
    unit = max(1.0, min(height, width) / 480)  # line widths and fonts grow with the image
    thick, font, fscale = max(1, round(2 * unit)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit
    pad = max(2, round(2 * unit))
    boxes: list[Rect] = [(x - pad, y - pad, x + w + pad, y + h + pad) for x, y, w, h in (f.box for f in faces)]
    labels: list[Rect] = []
    out: list[FaceLayout] = []
    for i, f in enumerate(faces):
        x, y, w, h = f.box
        text = f"{f.emotion} {100 * f.confidence:.0f}%"
        scale = fscale
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        while tw + 4 > width and scale > 0.2:  # a tiny image: a smaller font rather than a clipped label
            scale *= 0.8
            (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        lw, lh = tw + 4, th + base + base // 2 + 2
        lx = min(max(0, x), max(0, width - lw))
        # above the box, below it (where either fits in the image), else inside the box's top
        cands = [(lx, t) for t in (y - lh - 1, y + h + 2) if 0 <= t <= height - lh]
        cands.append((lx, min(max(0, y + 1), max(0, height - lh))))
        others = [b for j, b in enumerate(boxes) if j != i] + labels
        lx, ly = next(((cx, cy) for cx, cy in cands if not any(_overlaps((cx, cy, cx + lw, cy + lh), o)
                                                                for o in others)), cands[0])
        rect = (lx, ly, lx + lw, ly + lh)
        labels.append(rect)
        out.append(FaceLayout(rect, (lx + 2, ly + th + 1), scale))
    if not bars:
        return out
    panels: list[Rect] = []
    gap = max(3, round(6 * unit))
    for i, f in enumerate(faces):
        x, y, w, h = f.box
        obstacles = boxes + labels + panels
        for s in PANEL_SCALES:
            pw, ph, _, _, _ = _panel_size(classes, unit, s)
            ys = [min(max(0, y), height - ph), min(max(0, y + h - ph), height - ph)]
            xs = [min(max(0, x), width - pw), min(max(0, x + w - pw), width - pw)]
            cands = [(x + w + gap, py) for py in ys] + [(x - gap - pw, py) for py in ys] + \
                    [(px, y + h + gap) for px in xs] + [(px, y - gap - ph) for px in xs]
            spot = next(((px, py) for px, py in cands if _inside((px, py, px + pw, py + ph), width, height)
                         and not any(_overlaps((px, py, px + pw, py + ph), o) for o in obstacles)), None)
            if spot is not None:
                out[i].panel, out[i].panel_scale = (spot[0], spot[1], spot[0] + pw, spot[1] + ph), s
                panels.append(out[i].panel)
                break
    return out


def draw_faces(img: np.ndarray, faces: Sequence[Face], classes: Sequence[str], bars: bool = True) -> np.ndarray:
    """Draw on the (H, W, 3) BGR ``img`` in place: box, "emotion 93%" label, and (``bars``) a panel of
    probability bars beside the box, placed by :func:`annotation_layout` so that it never covers another face."""
    import cv2

    height, width = img.shape[:2]
    unit = max(1.0, min(height, width) / 480)
    thick, font = max(1, round(2 * unit)), cv2.FONT_HERSHEY_SIMPLEX
    layout = annotation_layout(faces, classes, img.shape, bars)
    for f in faces:
        x, y, w, h = f.box
        cv2.rectangle(img, (x, y), (x + w, y + h), COLORS.get(f.emotion, (0, 255, 0)), thick, cv2.LINE_AA)
    for f, lay in zip(faces, layout, strict=True):
        color = COLORS.get(f.emotion, (0, 255, 0))
        if lay.panel is not None:
            px, py, px1, py1 = lay.panel
            _, _, row, nw, bar_w = _panel_size(classes, unit, lay.panel_scale)
            bscale, bthick = 0.4 * unit * lay.panel_scale, max(1, round(unit * lay.panel_scale))
            roi = img[py:py1, px:px1]
            roi[:] = (roi * 0.45).astype(np.uint8)  # darkened backdrop: white names stay readable on any photo
            for k, c in enumerate(classes):
                p = float(f.probabilities.get(c, 0.0))
                yy = py + (k + 1) * row
                cv2.putText(img, c, (px + 2, yy - 2), font, bscale, (255, 255, 255), bthick, cv2.LINE_AA)
                bx = px + nw + 6
                cv2.rectangle(img, (bx, yy - row + 4), (bx + max(1, round(bar_w * p)), yy - 1),
                              COLORS.get(c, color), -1)
        lx, ly, lx1, ly1 = lay.label
        cv2.rectangle(img, (lx, ly), (lx1 - 1, ly1 - 1), color, -1)
        cv2.putText(img, f"{f.emotion} {100 * f.confidence:.0f}%", lay.text_origin, font, lay.font_scale,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return img


def draw_no_face(img: np.ndarray, text: str = "no face found") -> np.ndarray:
    """Mark the (H, W, 3) BGR ``img`` in place as holding no detected face: a red banner at its top left."""
    import cv2

    height, width = img.shape[:2]
    unit = max(1.0, min(height, width) / 480)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.6 * unit, max(1, round(2 * unit))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    while tw + 12 > width and scale > 0.2:
        scale *= 0.8
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(img, (0, 0), (min(width, tw + 12) - 1, min(height, th + base + 12) - 1), (40, 40, 220), -1)
    cv2.putText(img, text, (6, th + 6), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return img


