#!/usr/bin/env bash
# Launch a user's flat 2-rank `ddp` script (no __main__ guard; MAML on sinusoids, fit then test, CPU/gloo) N times,
# one after another, and count launches whose exit status is not 0. Before the teardown barrier
# (lightning_meta/distributed.py) a finished run could end in the upstream gloo abort at interpreter exit
# (`terminate called without an active exception`, exit -6/134; docs/howto/ddp.md).
#
#   bash scripts/stress_exit.sh N
#
# Logs in $STRESS_LOGS (default /tmp/stress_exit), one per launch. Last line: `non-zero exits: X of N`.
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: stress_exit.sh N}"
logs="${STRESS_LOGS:-/tmp/stress_exit}"
rm -rf "$logs" && mkdir -p "$logs"
python="${PYTHON:-$(command -v python || command -v python3)}"
export WANDB_MODE=offline PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cat > "$logs/train.py" <<'PY'
import pytorch_lightning as pl
from lightning_meta import MAML, EpisodicDataModule, SinusoidTasks
from lightning_meta.models import MLP

dm = EpisodicDataModule(SinusoidTasks(shots=5, queries=5), meta_batch_size=4, train_episodes_per_epoch=32,
                        val_episodes=8, test_episodes=8)
model = MAML(MLP(), inner_lr=0.01)
trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False)
trainer.fit(model, dm)
trainer.test(model, dm)
PY
bad=0
for i in $(seq 1 "$n"); do
    (cd "$logs" && MASTER_ADDR=127.0.0.1 MASTER_PORT=$((24000 + i % 1000)) timeout -s KILL 300 "$python" train.py \
        > "run$i.log" 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        bad=$((bad + 1))
        echo "launch $i: exit $rc ($(grep -m1 -E 'terminate called|Error' "$logs/run$i.log"))"
    fi
    (( i % 10 == 0 )) && echo "launch $i/$n: $bad non-zero so far"
done
echo "non-zero exits: $bad of $n"
[ "$bad" -eq 0 ]
