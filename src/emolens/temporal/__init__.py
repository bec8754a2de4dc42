"""The temporal model: sequences of face frames, how it is trained, and how it is measured.

The package is split by stage; every public name is importable from ``emolens.temporal`` as before.

* :mod:`.sequences`: synthetic sequences from FER2013 (:func:`jitter_run`, :func:`assemble_sequences`): FER has
  no video, so a "run" is one face image shown for many frames with a smooth head motion and the detector's crop
  noise; a sequence strings runs of different expressions together. Training runs come from the Training split
  only; the held-out evaluation sequences from PublicTest only.
* :mod:`.clips`: user sequence data (:func:`load_sequence_folder`): ``<class>/<clip>/*.png`` frames or
  ``<class>/*.mp4`` clips, one label per clip.
* :mod:`.runtime`: the inference side (:class:`OnnxFrameEncoder`, :class:`OnnxTemporalHead`, their torch twins,
  :func:`check_probe`): numpy and ONNX Runtime only, so the video pipeline runs without torch.
* :mod:`.training`: :func:`train_sequence`: the image model's encoder is frozen by default, so each frame is
  embedded once and only the small LSTM head is trained on (B, T, D) embeddings (minutes on a CPU).
* :mod:`.evaluation`: :func:`measure`: temporal model vs per-frame argmax vs an EMA of the per-frame
  probabilities: per-frame accuracy, label flips per 100 frames, delay to follow a change.
* :mod:`.checkpoint`: the .pt / .onnx files (:func:`save_temporal_model`, :func:`load_temporal_model`,
  :func:`export_temporal_onnx`) and :func:`load_pair`.

Torch is imported inside the functions that train or load .pt files.
"""

from __future__ import annotations

from .checkpoint import encoder_probe, export_temporal_onnx, load_pair, load_temporal_model, save_temporal_model
from .clips import VIDEO_SUFFIXES, is_sequence_folder, load_sequence_folder, read_frame_folder
from .evaluation import benchmark_temporal, ema_probs, format_table, measure, sequence_metrics
from .runtime import (
    DEFAULT_TEMPORAL,
    TEMPORAL_FORMAT,
    FrameEncoder,
    OnnxFrameEncoder,
    OnnxTemporalHead,
    TemporalHead,
    TorchFrameEncoder,
    TorchTemporalHead,
    check_probe,
    default_temporal_path,
    probe_faces,
)
from .sequences import Jitter, RunBank, assemble_sequences, build_run_bank, eval_sequences, jitter_run
from .training import SequenceConfig, fit_head, train_sequence

__all__ = ["Jitter", "jitter_run", "build_run_bank", "assemble_sequences", "eval_sequences", "RunBank",
           "FrameEncoder", "TorchFrameEncoder", "OnnxFrameEncoder", "TemporalHead", "OnnxTemporalHead",
           "TorchTemporalHead", "ema_probs", "sequence_metrics", "measure", "format_table", "benchmark_temporal",
           "load_pair", "SequenceConfig", "train_sequence", "fit_head", "load_sequence_folder", "read_frame_folder",
           "is_sequence_folder", "load_temporal_model", "save_temporal_model", "export_temporal_onnx",
           "encoder_probe", "probe_faces", "check_probe", "default_temporal_path", "DEFAULT_TEMPORAL",
           "TEMPORAL_FORMAT", "VIDEO_SUFFIXES"]
