#!/usr/bin/env bash
# Did a refactor cost speed or memory? Runs benchmarks/$BENCH.py (default maml) of commit REF (its own package
# and script, extracted with `git archive`) and of the working tree, back to back on this machine, and compares
# the ratios each run measured against a peer in that same run (maml.py: learn2learn; blackbox.py: MAML) --
# absolute tasks/s drift with machine load; the ratio to a peer measured minutes apart in the same process does not.
#
#   bash benchmarks/before_after.sh REF [maml.py args...]      e.g.  bash benchmarks/before_after.sh 3ee02cf
#   BENCH=blackbox bash benchmarks/before_after.sh REF --skip-calibration
#
# Saves benchmarks/results/before_after_$BENCH.json (both runs' tables and the after/before quotients). Needs
# learn2learn and Omniglot ($LIGHTNING_META_OMNIGLOT or ../shared/data/omniglot). ~15 min on 2 CPU cores each.
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:?usage: [BENCH=maml|blackbox] before_after.sh REF [benchmark args...]}"
bench="${BENCH:-maml}"
shift
python="${PYTHON:-$(command -v python || command -v python3)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/before_tree"
git archive "$ref" | tar -x -C "$work/before_tree"
export LIGHTNING_META_OMNIGLOT="${LIGHTNING_META_OMNIGLOT:-$PWD/../shared/data/omniglot}" WANDB_MODE=offline
echo "=== before: $ref ($(git rev-parse --short "$ref"))"
(cd "$work/before_tree" && LIGHTNING_META_RESULTS="$work/before" PYTHONPATH="$work/before_tree" \
    "$python" "benchmarks/$bench.py" "$@")
echo "=== after: working tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes'))"
LIGHTNING_META_RESULTS="$work/after" PYTHONPATH="$PWD" "$python" "benchmarks/$bench.py" "$@"
BENCH="$bench" REF="$ref" HEAD_REV="$(git rev-parse --short HEAD)" "$python" benchmarks/before_after.py \
    "$work/before/$bench.json" "$work/after/$bench.json"
