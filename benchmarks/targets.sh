#!/usr/bin/env bash
# The project's performance targets (--details): the sizes they name (64 B and 1 MiB), 5 interleaved
# repetitions with the quick counts, processes on different cores.  About a minute per 10 subjects.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/results"
exec ipcraft bench --sizes 64,1M --repeat 5 --placement cross --idle 5 --details \
    --json "$here/results/targets-$(date +%Y%m%d-%H%M%S).json" "$@"
