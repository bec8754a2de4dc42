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
``emolens.temporal.benchmark_temporal``). Each ``bench_*`` returns a typed result (a dataclass with
``to_dict()`` for JSON; dict access to its fields also works). Every public name is re-exported here
(``from emolens.bench import X``).
"""

from .common import ASSETS, calibration_faces, sample_faces, sample_frame, time_call
from .detector_quality import FACE_SIZES, MARGINS, DetectorQuality, bench_detector_quality, format_detector_quality
from .engines import EnginesBench, bench_engines, format_engines
from .predict import (
    DefaultSpeed,
    PredictBench,
    bench_classifier,
    bench_default,
    bench_detectors,
    bench_predict,
    format_predict,
)
from .serve import ServeBench, bench_image, bench_serve, format_bench
from .train import TrainBench, bench_train, format_train

__all__ = [
    "ASSETS", "FACE_SIZES", "MARGINS", "DefaultSpeed", "DetectorQuality", "EnginesBench", "PredictBench",
    "ServeBench", "TrainBench", "bench_classifier", "bench_default", "bench_detector_quality",
    "bench_detectors", "bench_engines", "bench_image", "bench_predict", "bench_serve", "bench_train",
    "calibration_faces", "format_bench", "format_detector_quality", "format_engines", "format_predict",
    "format_train", "sample_faces", "sample_frame", "time_call",
]
