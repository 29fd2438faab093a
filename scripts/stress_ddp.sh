#!/usr/bin/env bash
# Run every multi-process test N times and count failures: a flaky launch is a bug, so this is how to find one.
#
#   bash scripts/stress_ddp.sh N [pytest args...]
#
# Each round is one `pytest tests/integration/test_ddp.py` (MAML second-order/first-order/HVP and black-box under `ddp`,
# fit then test; MAML under `ddp_spawn`, fit then test; the non-finite-loss agreement of MAML and black-box;
# two nodes on loopback), plus tests/data/test_datamodule.py's two-rank shard test. Extra arguments go to pytest
# (e.g. `-k "ddp_spawn or two_nodes"`). Logs: $STRESS_LOGS (default /tmp/stress_ddp), one per round.
# Prints per-test failure counts, how many ddp_spawn launches ended in the accepted upstream SIGABRT at exit
# (after every rank wrote its results; see docs/howto/ddp.md), and a last line `failures: X of Y`.
# Costs about 4 minutes a round on 2 busy CPU cores.
set -uo pipefail
cd "$(dirname "$0")/.."
rounds="${1:?usage: stress_ddp.sh N [pytest args...]}"
shift
logs="${STRESS_LOGS:-/tmp/stress_ddp}"
mkdir -p "$logs"
export WANDB_MODE=offline PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-$(command -v python || command -v python3)}"  # the active venv's, or $PYTHON
tests=(tests/integration/test_ddp.py
       "tests/data/test_datamodule.py::test_ddp_shards_union_is_the_set_and_train_tasks_distinct")

start=$(date +%s)
for round in $(seq 1 "$rounds"); do
    log="$logs/round$round.log"
    "$python" -m pytest -q -s -rA -p no:cacheprovider "${tests[@]}" "$@" > "$log" 2>&1
    passed=$(grep -c '^PASSED ' "$log")
    failed=$(grep -cE '^(FAILED|ERROR) ' "$log")
    if [ $(( passed + failed )) -eq 0 ]; then  # pytest did not run (wrong interpreter, import error): a failure
        echo "ERROR round$round: no test ran: $(grep -m1 -E 'Error|error' "$log")" >> "$log"
        failed=1
    fi
    echo "round $round/$rounds: $passed passed, $failed failed ($(( $(date +%s) - start )) s so far)"
done

echo "--- per test (failed/run) ---"
cat "$logs"/round*.log | grep -E '^(PASSED|FAILED|ERROR) ' | sed -E 's/ - .*//' \
    | awk '{ runs[$2]++; if ($1 != "PASSED") bad[$2]++ } END { for (t in runs) printf "%d/%d %s\n", bad[t], runs[t], t }' \
    | sort -k2
total=$(cat "$logs"/round*.log | grep -cE '^(PASSED|FAILED|ERROR) ')
failures=$(cat "$logs"/round*.log | grep -cE '^(FAILED|ERROR) ')
aborts=$(cat "$logs"/round*.log | grep -c 'accepted the upstream SIGABRT')
spawn_launches=$(( 2 * $(cat "$logs"/round*.log | grep -cE '^(PASSED|FAILED|ERROR) .*ddp_spawn') ))
echo "ddp_spawn launches that ended in the accepted upstream SIGABRT: $aborts of $spawn_launches"
echo "failures: $failures of $total"
[ "$failures" -eq 0 ]
