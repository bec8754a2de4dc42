#!/usr/bin/env bash
# The 15-epoch recipe search of issue 13, one run at a time (two would halve each other on a 2-core CPU):
#   scripts/search.sh path/to/fer2013.zip [configs/search/s15-base.yaml ...]
# Each run's log is runs/train/search/<name>.log; a run folder that already has best.pt is skipped, and one
# with only last.pt (interrupted) is resumed. Then the table: python scripts/search_table.py
set -euo pipefail
data=${1:?usage: scripts/search.sh path/to/fer2013.zip [config.yaml ...]}
shift
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/search/s15-base.yaml configs/search/s15-crop44.yaml
    configs/search/s15-mixup.yaml configs/search/s15-cutmix.yaml configs/search/s15-ls0.yaml
    configs/search/s15-cosine.yaml configs/search/s15-wide.yaml configs/search/s15-deep.yaml)
mkdir -p runs/train/search
for cfg in "${configs[@]}"; do
    name=$(basename "$cfg" .yaml)
    run=runs/train/search/$name
    if [ -f "$run/metrics.json" ] && python3 -c "import json,sys,yaml; h=json.load(open('$run/metrics.json')); \
            sys.exit(0 if len(h) >= yaml.safe_load(open('$cfg'))['epochs'] else 1)" 2>/dev/null; then
        echo "$name: done"; continue
    fi
    resume=()
    [ -f "$run/last.pt" ] && resume=(--resume "$run/last.pt")
    echo "$name: training ($(date -u +%H:%M) UTC)"
    start=$SECONDS
    emolens train --config "$cfg" --data "$data" "${resume[@]}" >> "runs/train/search/$name.log" 2>&1
    echo "$name: $((SECONDS - start)) s wall" | tee -a "runs/train/search/$name.log"
done
