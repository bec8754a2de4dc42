"""What the API speaks: the request limits (:class:`Limits`), the client error (:class:`ApiError`) and the
pydantic models of the OpenAPI spec (responses and the JSON request bodies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..decode import MAX_PIXELS


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Defaults fit a webcam frame or a phone photo with room to spare."""

    max_upload_bytes: int = 10 * 1024 * 1024  # one encoded image
    max_pixels: int = MAX_PIXELS  # width * height from the header, checked before decoding (bombs)
    max_batch: int = 16  # images in one /v1/predict/batch request
    max_request_bytes: int = 32 * 1024 * 1024  # whole request body (batch), base64 included
    body_timeout_s: float = 30.0  # a client must finish sending its body within this
    ws_idle_timeout_s: float = 60.0  # a websocket with no message for this long is closed
    max_faces: int = 32  # faces returned per image (largest first), bounds the work per request
    max_request_pixels: int = MAX_PIXELS  # decoded pixels of a whole batch request (sum over its images)
    chunk_pixels: int = 4_000_000  # a batch runs in chunks of about this many pixels; other requests go between
    head_timeout_s: float = 5.0  # a connection must send a complete request head (line + headers) within this
    max_waiting_connections: int = 512  # connections without a request head; past it the oldest is closed
    max_requests: int = 64  # HTTP requests in progress at once; more get 503 (Retry-After)
    max_streams: int = 16  # live websocket streams at once; more are closed with code 1013 (try again later)
    max_form_parts: int = 256  # parts of one multipart body (images and form fields); more is a 413
    max_json_values: int = 10_000  # commas in one JSON body (images, box numbers); more is a 413, before parsing


class ApiError(Exception):
    """A client error: becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Tta = Literal["none", "flip", "shift", "crops"]


def _detector_names() -> tuple[str, ...]:
    """Every detector emolens knows (the ``detector`` query option's choices); a broken import fails loudly."""
    from ..faces import list_detectors

    return tuple(list_detectors())


Detector = Literal[_detector_names()]  # type: ignore[valid-type]  # every detector emolens knows


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. image_too_large")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorOut(BaseModel):
    error: ErrorDetail


class FaceOut(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in pixels of the sent image", min_length=4,
                           max_length=4)
    emotion: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float]


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    name: str
    sha256: str


class PredictOut(BaseModel):
    faces: list[FaceOut]
    image: ImageSize
    model: ModelRef
    timing_ms: float = Field(description="server time for this request, decode to answer")


class ImageResult(BaseModel):
    faces: list[FaceOut]
    image: ImageSize


class BatchOut(BaseModel):
    results: list[ImageResult]
    model: ModelRef
    timing_ms: float


class ModelOut(BaseModel):
    name: str
    runtime: str
    classes: list[str]
    sha256: str = Field(description="SHA-256 of the model file")
    accuracy: float | None = Field(description="FER2013 public-test accuracy recorded in the model file, for the "
                                   "test-time views of accuracy_tta")
    accuracy_tta: str | None = Field(None, description="the views that accuracy is for: none (one view, this "
                                     "server's default) or flip")
    metrics: dict[str, Any]
    stream_smoothing: str = Field(description="how /v1/stream smooths labels per track: temporal, ema or none")
    version: str = Field(description="emolens version")


class HealthOut(BaseModel):
    status: str
    version: str
    model_loaded: bool
    auth_required: bool


class ImageJSON(BaseModel):
    image: str = Field(description="base64 of a JPEG/PNG/BMP/WebP file (a data: URL is accepted)",
                       json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"})
    boxes: list[list[float]] | None = Field(
        None, description="your own face boxes [[x, y, w, h], ...] in pixels of the image, classified in that order "
                          "instead of detecting faces (multipart: a form field 'boxes' holding this JSON); a box "
                          "not inside the image is a 422")


class BatchJSON(BaseModel):
    images: list[str] = Field(description="base64 images, at most the server's batch limit")

