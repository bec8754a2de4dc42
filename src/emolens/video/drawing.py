"""What a video shows: the photo overlay plus track ids on each frame (:func:`draw_tracks`) and the per-track
timeline plot of a video's probabilities (:func:`plot_timeline`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..preprocess import CLASSES

if TYPE_CHECKING:
    from ..predict import Face


def draw_tracks(frame: np.ndarray, faces: list[Face], bars: bool = True) -> np.ndarray:
    """The photo overlay (:func:`emolens.predict.draw_faces`: box, emotion, bars) plus each track's id
    under its box, drawn on ``frame`` in place."""
    import cv2

    from ..predict import COLORS, draw_faces

    draw_faces(frame, faces, CLASSES, bars)
    h, w = frame.shape[:2]
    unit = max(1.0, min(h, w) / 480)
    for f in faces:
        x, y, bw, bh = f.box
        label = f"#{f.track_id}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, max(1, round(unit)))
        ty = min(y + bh + th + 6, h - base)
        cv2.rectangle(frame, (x, ty - th - 4), (x + tw + 6, ty + base), COLORS.get(f.emotion, (0, 255, 0)), -1)
        cv2.putText(frame, label, (x + 3, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, (0, 0, 0),
                    max(1, round(unit)), cv2.LINE_AA)
    return frame


def plot_timeline(rows: list[dict[str, Any]], path: str | Path, title: str = "", max_tracks: int = 8) -> None:
    """Per track (the ``max_tracks`` longest), the probability of each emotion over time, stacked."""
    from ..reports import _pyplot, save_figure

    plt = _pyplot()
    by_track: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_track.setdefault(int(r["track_id"]), []).append(r)
    tracks = sorted(by_track, key=lambda k: -len(by_track[k]))[:max_tracks]
    from ..predict import COLORS

    colors = {c: tuple(v / 255 for v in COLORS[c][::-1]) for c in CLASSES}
    n = max(len(tracks), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 + 1.6 * n), squeeze=False, sharex=True)
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no faces found", ha="center", va="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    for ax, tid in zip(axes[:, 0], tracks, strict=False):
        rs = sorted(by_track[tid], key=lambda r: int(r["frame"]))
        t = np.array([float(r["time_s"]) for r in rs])
        p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rs]).T
        # gaps (frames where the track was not seen) are left blank rather than interpolated
        frames = np.array([int(r["frame"]) for r in rs])
        breaks = np.flatnonzero(np.diff(frames) > 1) + 1
        for seg_t, seg_p in zip(np.split(t, breaks), np.split(p, breaks, axis=1), strict=True):
            ax.stackplot(seg_t, seg_p, colors=[colors[c] for c in CLASSES], linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {tid}")
        ax.margins(x=0)
    axes[0, 0].legend([plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in CLASSES], CLASSES, ncol=7,
                      loc="lower center", bbox_to_anchor=(0.5, 1.02), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, y=1.0 + 0.02 * n, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)
    plt.close(fig)
