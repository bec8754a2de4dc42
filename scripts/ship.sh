#!/usr/bin/env bash
# Ship a trained image model and re-make every figure the README and model card quote for it:
#   scripts/ship.sh runs/train/<run>/best.pt path/to/fer2013.zip [out-dir]
# 1. the shipped pair (fp16 .pt + int8 ONNX, gated on PublicTest) into src/emolens/weights; 2. the temporal
# head retrained on the new encoder (about 7 min on 2 CPU cores); 3. PublicTest evaluation (report, confusion
# matrix); 4. the default speed line, the temporal table and the detector-quality tables. Logs go to out-dir
# (default runs/ship).
# One job at a time: run it on a quiet machine, the speed figures depend on it.
set -euo pipefail
ckpt=${1:?usage: scripts/ship.sh CHECKPOINT FER2013 [OUT]}
data=${2:?usage: scripts/ship.sh CHECKPOINT FER2013 [OUT]}
out=${3:-runs/ship}
weights=src/emolens/weights
mkdir -p "$out"
export EMOLENS_FER2013=$data

emolens export "$ckpt" --ship "$weights" --int8 --data "$data" 2>&1 | tee "$out/export.log"
emolens train --task sequence --image-model "$weights/emolens_cnn_lstm.pt" --data "$data" \
    --out "$out/temporal" 2>&1 | tee "$out/temporal.log"
cp "$out/temporal/temporal.pt" "$weights/emolens_temporal.pt.tmp" && mv "$weights/emolens_temporal.pt.tmp" "$weights/emolens_temporal.pt"
cp "$out/temporal/temporal.onnx" "$weights/emolens_temporal.onnx.tmp" && mv "$weights/emolens_temporal.onnx.tmp" "$weights/emolens_temporal.onnx"
emolens evaluate --data "$data" --split public --out "$out/evaluate-public" 2>&1 | tee "$out/evaluate.log"
emolens bench predict 2>&1 | tee "$out/bench-predict.log"
emolens bench temporal --data "$data" 2>&1 | tee "$out/bench-temporal.log"
emolens bench predict --detector-quality 2>&1 | tee "$out/bench-detector-quality.log"
ls -l "$weights"
