#!/usr/bin/env bash
# Launch tests/scripts/resume_job.py (MAML, 2 DDP ranks, 2 DataLoader workers each, 13 steps) N times, PARALLEL at
# a time, and count launches that fail or hang (killed after 150 s). This found the fork-at-birth deadlock of
# DataLoader workers (docs/howto/ddp.md); pass a start method to compare:
#
#   bash scripts/stress_workers.sh N [PARALLEL=3] [START_METHOD=auto]
#
# Logs in $STRESS_LOGS (default /tmp/stress_workers), one folder per launch. Last line: `hung or failed: X of N`.
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: stress_workers.sh N [PARALLEL] [START_METHOD]}"
par="${2:-3}"
method="${3:-auto}"
logs="${STRESS_LOGS:-/tmp/stress_workers}"
rm -rf "$logs" && mkdir -p "$logs"
python="${PYTHON:-$(command -v python || command -v python3)}"
export WANDB_MODE=offline PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" LIGHTNING_META_WORKER_START="$method"
launch() {
    local i=$1 dir="$logs/run$1"
    mkdir -p "$dir"
    MASTER_ADDR=127.0.0.1 MASTER_PORT=$((27000 + i % 1000)) timeout -s KILL 150 setsid "$python" \
        tests/scripts/resume_job.py "$dir" maml 2 2 13 > "$dir/log" 2>&1
    local rc=$?
    [ "$rc" -ne 0 ] && pkill -9 -f "resume_job.py $dir " 2>/dev/null
    echo "launch $i: exit $rc" | tee -a "$logs/summary"
}
for i in $(seq 1 "$n"); do
    launch "$i" &
    if (( i % par == 0 )); then wait; fi
done
wait
bad=$(grep -vc "exit 0$" "$logs/summary")
echo "worker start method $method: hung or failed: $bad of $n"
[ "$bad" -eq 0 ]
