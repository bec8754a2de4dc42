"""Video, camera and stream input: follow each face and label it over time.

The package is split by concern; every public name is importable from ``emolens.video`` as before.

* :mod:`.tracking`: :class:`Tracker` links the faces found in successive frames into tracks with stable ids.
* :mod:`.smoothing`: per-track label smoothing (:class:`EmaSmoother`, :class:`TemporalSmoother` over the temporal
  LSTM of :mod:`emolens.temporal`, none) and :func:`make_smoother`, which picks one.
* :mod:`.processor`: :class:`VideoProcessor`, the frame pipeline (detect every few frames, track, classify every
  tracked face, smooth per track).
* :mod:`.run`: :func:`process_video` (``emolens video``: annotated video, CSV timeline, plot), :func:`run_webcam`
  (``emolens webcam``) and :func:`bench_video`.
* :mod:`.io`: opening and reading videos, codecs and atomic writing, the timeline CSV, a synthetic test clip.
* :mod:`.drawing`: the overlay on frames and the timeline plot.
* :mod:`.crops`: :func:`clip_face_crops`, the face crops of a short clip (a leaf: the temporal model's clip
  loader uses it without importing the pipeline).

Outputs are written to a temporary file and renamed when done, so a reader never sees half a file; a
stream that stops early keeps what was processed. Frames are never stored unless an output is asked for.
"""

from __future__ import annotations

from .crops import clip_box, clip_face_crops
from .drawing import draw_tracks, plot_timeline
from .io import (
    AUTO_CODECS,
    BROWSER_CODECS,
    CODECS,
    CSV_COLUMNS,
    VideoError,
    open_capture,
    open_video_writer,
    read_frames,
    synthetic_face_video,
    video_codec,
)
from .processor import VideoProcessor
from .run import VideoBench, VideoResult, bench_video, format_bench_video, gui_available, process_video, run_webcam
from .smoothing import EmaSmoother, Smoother, TemporalSmoother, encoder_for_classifier, frame_encoder_for, make_smoother
from .tracking import Track, Tracker, iou_matrix

__all__ = ["Tracker", "Track", "iou_matrix", "VideoProcessor", "process_video", "VideoResult",
           "run_webcam", "VideoBench", "bench_video", "format_bench_video", "plot_timeline", "draw_tracks",
           "read_frames",
           "clip_face_crops", "clip_box", "open_capture", "open_video_writer", "video_codec",
           "gui_available", "synthetic_face_video", "EmaSmoother", "TemporalSmoother", "Smoother", "make_smoother",
           "frame_encoder_for", "encoder_for_classifier", "VideoError", "CSV_COLUMNS", "CODECS", "AUTO_CODECS",
           "BROWSER_CODECS"]
