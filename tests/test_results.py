"""Typed results: attributes, to_dict() for JSON, and read-only dict access for scripts written against dicts."""

from __future__ import annotations

import json

import pytest

from emolens.export import ExportResult, ShipResult


def test_result_is_typed_json_ready_and_reads_like_the_old_dict():
    r = ExportResult("m.onnx", 123, 17, 1e-6)
    assert r.path == "m.onnx" and r["size_bytes"] == 123 and r.get("int8_path") is None
    assert list(r) == ["path", "size_bytes", "opset", "max_abs_diff", "int8_path", "int8_size_bytes",
                       "public_acc_fp32", "public_acc_int8", "public_images"]
    assert json.loads(json.dumps(r.to_dict()))["opset"] == 17
    with pytest.raises(KeyError):
        r["nope"]
    with pytest.raises(AttributeError):
        r.path = "other.onnx"  # frozen: a result reports what happened
    s = ShipResult("a.pt", "a.onnx", 0.0, {"a.pt": 1, "a.onnx": 2}, 3)
    assert s.to_dict()["sizes"] == {"a.pt": 1, "a.onnx": 2} and dict(s)["total_bytes"] == 3
