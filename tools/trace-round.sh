#!/usr/bin/env bash
# One round of issue 9's acceptance runs: `cleave bench trace` for resnet50-light and PP-OCRv4 det
# on every uplink trace, with the command of docs/TRACES.md, then the table of every run.
#
#   tools/trace-round.sh OUT [PAIR...] [-- EXTRA BENCH ARGS]
#
# - OUT: a new folder for the results: per run <model>-<trace>.{json,jsonl,png,log}, table.md.
# - PAIR: `resnet:TRACE` or `det:TRACE` (TRACE without `.up`); default: both models on every
#   `$SHARED/traces/*.up`.
# - EXTRA: appended to every `cleave bench trace` (e.g. `--offset-ms 60000 --hedge eager`).
# - Environment: SHARED (default ../shared) holds models/ and traces/; CLEAVE (default
#   target/release/cleave, built first when it is the default) is the binary measured.
# Needs root (the device's CPU quota is a cgroup) and Debian's fonts-dejavu-core (det's pages).
# Each run takes about 6 minutes on 2 cores; the runs go one after another, at nice -15.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:?usage: tools/trace-round.sh OUT [PAIR...] [-- EXTRA BENCH ARGS]}"
shift
pairs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do pairs+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=("$@")

shared="${SHARED:-../shared}"
[ -d "$shared/traces" ] || { echo "no traces under $shared (set SHARED)" >&2; exit 2; }
if [ -z "${CLEAVE:-}" ]; then
    cargo build --release --quiet -p cleave-cli -p cleave-testkit --bin cleave --example textpages
    CLEAVE=target/release/cleave
fi
if [ ${#pairs[@]} -eq 0 ]; then
    for m in resnet det; do
        for t in "$shared"/traces/*.up; do pairs+=("$m:$(basename "$t" .up)"); done
    done
fi
mkdir -p "$out"
pages="$out/pages.npz"
if [ ! -f "$pages" ]; then
    cargo run --release --quiet -p cleave-testkit --example textpages -- --n 16 --seed 7 -o "$pages" >/dev/null
fi
for pair in "${pairs[@]}"; do
    model="${pair%%:*}"
    trace="${pair#*:}"
    case "$model" in
        resnet) args=(--model "$shared/models/light/light_resnet50.onnx" --input assets/photos/photos.npz
                      --pixels imagenet --frames 16 --fps 0.5) ;;
        det) args=(--model "$shared/models/ch_PP-OCRv4_det_infer.onnx" --shape x=1,3,480,640 --input "$pages"
                   --pixels imagenet-bgr --frames 12 --fps 0.25) ;;
        *) echo "unknown model '$model' in '$pair' (resnet or det)" >&2; exit 2 ;;
    esac
    base="$out/$model-$trace"
    echo "$(date +%H:%M:%S) $model on $trace" >&2
    nice -n -15 "$CLEAVE" bench trace "${args[@]}" --trace "$shared/traces/$trace.up" --device-cpu 0.15 \
        --static-cuts 0 --delay 20ms --json "$base.json" --plot "$base.png" --records "$base.jsonl" \
        "${extra[@]}" >"$base.log" 2>&1 || echo "  failed: see $base.log" >&2
done
python3 tools/trace-table.py "$out" | tee "$out/table.md"
