#!/usr/bin/env bash
# Trainings one at a time (two would halve each other on a 2-core CPU); by default the 15-epoch recipe
# search of issue 13:
#   scripts/search.sh path/to/fer2013.zip [configs/search/s15-base.yaml ...]
# Each run's log is <out>.log beside its run folder <out> (the config's `out`); a run whose metrics.json
# already has every epoch is skipped, one with last.pt (interrupted) is resumed.
# Then the search's table: python scripts/search_table.py
set -euo pipefail
data=${1:?usage: scripts/search.sh path/to/fer2013.zip [config.yaml ...]}
shift
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/search/s15-base.yaml configs/search/s15-crop44.yaml
    configs/search/s15-mixup.yaml configs/search/s15-cutmix.yaml configs/search/s15-ls0.yaml
    configs/search/s15-cosine.yaml configs/search/s15-wide.yaml configs/search/s15-deep.yaml)
for cfg in "${configs[@]}"; do
    name=$(basename "$cfg" .yaml)
    run=$(python3 -c "import yaml; print(yaml.safe_load(open('$cfg'))['out'])")
    mkdir -p "$(dirname "$run")"
    if [ -f "$run/metrics.json" ] && python3 -c "import json,sys,yaml; h=json.load(open('$run/metrics.json')); \
            sys.exit(0 if len(h) >= yaml.safe_load(open('$cfg'))['epochs'] else 1)" 2>/dev/null; then
        echo "$name: done"; continue
    fi
    resume=()
    [ -f "$run/last.pt" ] && resume=(--resume "$run/last.pt")
    echo "$name: training ($(date -u +%H:%M) UTC)"
    start=$SECONDS
    emolens train --config "$cfg" --data "$data" "${resume[@]}" >> "$run.log" 2>&1
    echo "$name: $((SECONDS - start)) s wall" | tee -a "$run.log"
done
