#!/usr/bin/env bash
# Makes docs/report.png, the picture of `avfuse report` in the README: a replay of a real clip and of the
# synthetic sample clip (two streams in one records file, periodic summaries every 5 s so that the A/V
# offset lane has points), their report with one thumbnail per scene, and a headless Chromium screenshot.
#
#   scripts/report_screenshot.sh [CLIP]     CLIP defaults to ../shared/media/big_buck_bunny_0_30.webm
#
# Needs the virtualenv (make setup) and chromium (make test-tools). Takes about a minute; writes only
# docs/report.png (the records and the page go to a temporary folder, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIP=${1:-../shared/media/big_buck_bunny_0_30.webm}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

.venv/bin/avfuse sample "$WORK/sample.mp4" >/dev/null
# Quiet unless it fails: the replay's summary table goes to the terminal otherwise.
.venv/bin/avfuse replay "$CLIP" "$WORK/sample.mp4" --out "$WORK/replay.jsonl" --no-progress \
    --set records.summary_every_s=5 >"$WORK/replay.log" 2>&1 || { cat "$WORK/replay.log"; exit 1; }
.venv/bin/avfuse report "$WORK/replay.jsonl" --media "$CLIP" --media "$WORK/sample.mp4" \
    -o "$WORK/replay.html" >/dev/null

mkdir -p docs
# --no-sandbox: Chromium's sandbox does not run as root (containers); the page is our own file.
# --run-all-compositor-stages-before-draw: a finished frame, not the blank one a busy machine may catch.
SANDBOX=$([ "$(id -u)" = 0 ] && echo --no-sandbox || true)
chromium --headless=new $SANDBOX --disable-gpu --hide-scrollbars --no-first-run --disable-dev-shm-usage \
    --user-data-dir="$WORK/profile" --window-size=1400,1700 --virtual-time-budget=2000 \
    --run-all-compositor-stages-before-draw \
    --screenshot="$PWD/docs/report.png" "file://$WORK/replay.html" 2>/dev/null
echo "wrote docs/report.png"
