"""Speed and quality measurements behind ``emolens bench``, one module per thing measured:

- :mod:`.predict`: the classifier per runtime (torch, ONNX fp32, ONNX int8) at batch 1 and batched, with and
  without TTA, what ``EmotionRecognizer()`` runs out of the box (``bench_default``), the detectors per frame;
- :mod:`.detector_quality`: recall and false hits of each face detector, and how well its crops classify;
- :mod:`.train`: training-step throughput, float32 against bf16 autocast;
- :mod:`.engines`: ``emolens predict`` with the local engine against the Ray engine;
- :mod:`.serve`: the HTTP API under load (``bench_serve``: concurrent clients, optionally during a slow-client
  attack);
- :mod:`.common`: the timer and the sample inputs they share.

The video and temporal benchmarks live with their code (``emolens.video.bench_video``,
``emolens.temporal.benchmark_temporal``). Every public name is re-exported here (``from emolens.bench import X``).
"""

from .common import ASSETS, calibration_faces, sample_faces, sample_frame, time_call
from .detector_quality import FACE_SIZES, MARGINS, bench_detector_quality, format_detector_quality
from .engines import bench_engines, format_engines
from .predict import bench_classifier, bench_default, bench_detectors, bench_predict, format_predict
from .serve import bench_image, bench_serve, format_bench
from .train import bench_train, format_train

__all__ = [
    "ASSETS", "FACE_SIZES", "MARGINS", "bench_classifier", "bench_default", "bench_detector_quality",
    "bench_detectors", "bench_engines", "bench_image", "bench_predict", "bench_serve", "bench_train",
    "calibration_faces", "format_bench", "format_detector_quality", "format_engines", "format_predict",
    "format_train", "sample_faces", "sample_frame", "time_call",
]
