"""The one preprocessing path shared by training, evaluation, torch and ONNX inference and the API.

Everything that turns pixels into model input goes through here, so a face crop gives the same tensor
whichever runtime or entry point sees it. Only numpy and OpenCV: the ONNX inference path needs no torch.
"""

from __future__ import annotations

import numpy as np

#: The 7 FER2013 classes in the order every model in emolens outputs them (alphabetical, as the
#: Kaggle folders). The original fer2013.csv uses another order: see ``emolens.data.CSV_LABELS``.
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

#: Side of the square grayscale model input, in pixels.
INPUT_SIZE: int = 48

#: Normalisation applied to uint8 pixels: (x / 255 - MEAN) / STD. Stored in every checkpoint and ONNX file.
MEAN: float = 0.5
STD: float = 0.25


def to_gray(image: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
    """Return a 2-D uint8 grayscale view of ``image`` (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    ``channel_order`` is "bgr" (OpenCV) or "rgb" (PIL, scikit-image); it only matters for colour input.
    """
    import cv2

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', not {channel_order!r}")
        code = {
            ("bgr", 3): cv2.COLOR_BGR2GRAY,
            ("rgb", 3): cv2.COLOR_RGB2GRAY,
            ("bgr", 4): cv2.COLOR_BGRA2GRAY,
            ("rgb", 4): cv2.COLOR_RGBA2GRAY,
        }[(channel_order, image.shape[2])]
        gray = cv2.cvtColor(np.ascontiguousarray(image), code)
    else:
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if gray.dtype != np.uint8:
        if np.issubdtype(gray.dtype, np.floating) and gray.size and float(gray.max()) <= 1.0:
            gray = gray * 255.0
        gray = np.clip(gray, 0, 255).astype(np.uint8)
    return gray


def preprocess(image: np.ndarray, channel_order: str = "bgr", size: int = INPUT_SIZE) -> np.ndarray:
    """Any image or face crop -> (size, size) uint8 grayscale, the form datasets are stored in.

    Colour is converted to gray, then the image is resized with area interpolation when shrinking
    (no aliasing) and bilinear when enlarging. A 48x48 gray input comes back unchanged.
    """
    import cv2

    gray = to_gray(image, channel_order)
    h, w = gray.shape
    if h == 0 or w == 0:
        raise ValueError("empty image (zero width or height)")
    if (h, w) != (size, size):
        interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (size, size), interpolation=interp)
    return np.ascontiguousarray(gray)


def normalize(batch: np.ndarray, mean: float = MEAN, std: float = STD) -> np.ndarray:
    """uint8 faces (N, H, W) -> float32 model input (N, 1, H, W), scaled by ``mean``/``std``.

    The torch training path does the same arithmetic on the device (``emolens.train``); a test checks
    they agree.
    """
    if batch.ndim == 2:
        batch = batch[None]
    if batch.ndim != 3:
        raise ValueError(f"expected faces of shape (N, H, W), got {batch.shape}")
    x = batch.astype(np.float32) * (1.0 / 255.0)
    x = (x - mean) / std
    return x[:, None, :, :]
