#!/usr/bin/env bash
# The full run: reference iteration counts, 3 interleaved repetitions, every subject, idle CPU of
# blocking receivers; JSON and plot next to this script.  Takes several minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/results"
stamp="$(date +%Y%m%d-%H%M%S)"
plot=()
python -c "import matplotlib" 2>/dev/null && plot=(--plot "$here/results/full-$stamp.png")
exec ipcraft bench --full --placement cross --json "$here/results/full-$stamp.json" "${plot[@]}" "$@"
