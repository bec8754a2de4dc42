"""The recognizer behind the API (:class:`Engine`): per-request options, face boxes, the model card, and a
fresh tracker + smoother for each live stream."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from .. import __version__
from ..decode import MAX_PIXELS
from .schemas import ApiError

log = logging.getLogger("emolens.serve")  # one logger name for the whole server, as before the split


class Engine:
    """The recognizer plus what the API needs around it: per-request options, tracking, the model card.

    All methods are blocking (CPU): call them from a worker thread.
    """

    def __init__(self, recognizer: Any, smooth: str = "auto"):
        self.recognizer = recognizer
        self.smooth = smooth
        self._smoother: Any = None  # template: its (read-only) temporal head is shared by every stream
        self._info: dict[str, Any] | None = None

    def new_video_processor(self):
        """A fresh tracker + smoother for one live stream (ids start at 1, no history)."""
        from ..video import VideoProcessor, frame_encoder_for, make_smoother

        if self._smoother is None:
            self._smoother = make_smoother(self.smooth, frame_encoder_for(self.recognizer), warn=log.warning)
        # Detect on every frame: frames arrive at the client's pace and some are dropped, so the motion
        # model has less to go on than in a video file.
        return VideoProcessor.from_recognizer(self.recognizer, detect_every=1, smoother=self._smoother.new())

    def stream_smoothing(self) -> str:
        return getattr(self._smoother, "name", self.smooth)

    # The recognizer API (emolens.predict) is adapted here so the routes do not depend on its details.
    @property
    def classifier(self):
        return self.recognizer.classifier

    def model_info(self) -> dict[str, Any]:
        if self._info is None:
            info = self.classifier.info()
            metrics = info.get("metrics") or {}
            acc, acc_tta = _recorded_accuracy(metrics, getattr(self.recognizer, "tta", "none"))
            self._info = {"name": info.get("name", ""), "runtime": info.get("runtime", ""),
                          "classes": list(info.get("classes", [])), "sha256": info.get("sha256", ""),
                          "accuracy": acc, "accuracy_tta": acc_tta,
                          "metrics": _finite(metrics), "stream_smoothing": self.stream_smoothing(),
                          "version": __version__}
        return self._info

    def model_ref(self) -> dict[str, str]:
        info = self.model_info()
        return {"name": info["name"], "sha256": info["sha256"]}

    def predict(self, images: list[np.ndarray], detector: str | None = None, tta: str | None = None,
                faces_only: bool = False, max_faces: int = 32, boxes: Any = None) -> list[list[dict[str, Any]]]:
        """BGR or gray images -> per image, its faces {box, emotion, confidence, probabilities}, largest
        ``max_faces`` (in the recognizer's left-to-right order). ``boxes``: the user's face boxes of the one
        image, instead of detection. Bad options, images or boxes raise ApiError."""
        from ..faces import DetectorError
        from ..predict import BoxError, ImageError
        from ..runtime import ModelError

        try:
            if boxes is not None:
                if faces_only or len(images) != 1:
                    raise BoxError("boxes go with one image, and not with faces_only")
                if isinstance(boxes, list) and len(boxes) > max_faces:
                    raise BoxError(f"{len(boxes)} boxes, the limit is {max_faces} faces per image")
                per_image = [self.recognizer.predict(images[0], boxes=boxes, **_opt(tta=tta))]
            else:
                per_image = self.recognizer.predict_batch(images, **_opt(tta=tta, detector=detector),
                                                          detect=False if faces_only else None)
        except BoxError as e:
            raise ApiError(422, "bad_boxes", str(e)) from None
        except DetectorError as e:
            raise ApiError(422, "detector_unavailable", str(e)) from None
        except ImageError as e:
            raise ApiError(422, "bad_image", str(e)) from None
        except ModelError as e:  # damaged weights giving NaN: the server's fault, said in JSON, never NaN
            log.error("model error: %s", e)
            raise ApiError(500, "model_error", "the model gave no valid output (logged on the server)") from None
        out = []
        for faces in per_image:
            keep = {id(f) for f in sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)[:max_faces]}
            out.append([_face_out(f) for f in faces if id(f) in keep])
        return out


def _opt(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON cannot carry NaN/inf: drop them (and anything not a plain scalar)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            out[k] = v
        elif isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v)):
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def _face_out(face: Any) -> dict[str, Any]:
    """A Face as the API returns it: box, emotion, confidence, probabilities, and the track id of a tracked face."""
    d = face.to_dict()
    out = {"box": [int(v) for v in d["box"]], "emotion": str(d["emotion"]), "confidence": float(d["confidence"]),
           "probabilities": {str(k): float(v) for k, v in d["probabilities"].items()}}
    if "track_id" in d:
        out["track_id"] = d["track_id"]
    return out


def load_recognizer(model: str | None = None, runtime: str = "auto", detector: str = "auto",
                    tta: str = "none", max_pixels: int = MAX_PIXELS) -> Any:
    """The recognizer the server uses (``emolens.predict.EmotionRecognizer``); one per worker process."""
    from ..faces import DetectorError
    from ..predict import EmotionRecognizer

    if runtime == "auto" and model is None:
        runtime = "onnx"
    try:
        return EmotionRecognizer(model=model, runtime=runtime, detector=detector, tta=tta, max_pixels=max_pixels)
    except DetectorError as e:
        raise ValueError(str(e)) from None


def _recorded_accuracy(metrics: dict[str, Any], tta: str) -> tuple[float | None, str | None]:
    """The FER2013 public-test accuracy the model file records for the views this server uses (``tta``), and
    which views that figure is for: the server's default is one view, so a flip figure would promise more
    than it gives (the model file records no view (none) and flip; other TTAs report the flip figure)."""
    if tta == "none":
        keys = [("public_acc_int8", "none"), ("public_acc", "none"), ("public_acc_flip", "flip")]
    else:
        keys = [("public_acc_flip", "flip"), ("public_acc", "none")]
    for key, views in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(float(value)):
            return float(value), views
    return None, None
