"""What ``torch.compile`` does for the learners on this machine, and whether it pays: compiled against eager in the
same process (ratios of steady-state step times, not absolute times), plus the compile time.

    python benchmarks/compile.py [--steps 10] [--tasks 4] [--device cpu|cuda]

Cases (Omniglot-sized 5-way 1-shot tasks with 5 queries per class, Conv-4 with 64 filters, random images):

* ``protonet``: ``ProtoNet(torch.compile(Conv4(embed_only=True)))``: the encoder compiled, the learner eager.
* ``blackbox``: ``BlackBoxAdaptation(torch.compile(Conv4(embed_only=True)))``, mean aggregator.
* ``maml_first_order``: ``MAML(torch.compile(Conv4()), meta_gradient="first_order")``: the network compiled, run
  through ``functional_call`` in the inner loop (no double backward).
* ``maml_second_order``: the same with ``"second_order"``: the inner gradient is differentiated again, which
  aot_autograd does not support (pytorch/pytorch#181581, #183603). With torch's defaults the backward fails on its
  donated buffers; with ``torch._functorch.config.donated_buffer = False`` (``maml_second_order_no_donation``) it
  fails with "does not currently support double backward". The errors are recorded.
* ``lightning_module``: ``torch.compile(learner)`` handed to the Trainer, and the same for a plain LightningModule
  that calls ``self.log`` in ``training_step``: Dynamo fails inside Lightning's ``self.log``; the errors are recorded.

A step is ``objective(batch).loss.backward()`` and an Adam step (what ``training_step`` costs without the logging);
eager and compiled steps alternate, and the ratio is of their medians. The compile time is the first compiled step
less the first eager one, with an empty inductor cache at the start of the run (later cases may reuse kernels an
earlier one compiled, as a user's process would). Writes ``benchmarks/results/compile.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
import torch._functorch.config
from common import save

import lightning_meta
from lightning_meta import MAML, BlackBoxAdaptation, EpisodicDataModule, ProtoNet, SinusoidTasks, TaskBatch
from lightning_meta._lightning import pl
from lightning_meta.models import MLP, Conv4


def omniglot_like(tasks: int, ways: int = 5, shots: int = 1, queries: int = 5) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    support_y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    query_y = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(torch.rand(tasks, ways * shots, 1, 28, 28, generator=g), support_y,
                     torch.rand(tasks, ways * queries, 1, 28, 28, generator=g), query_y)


LEARNERS: dict[str, Callable[[torch.nn.Module | None], pl.LightningModule]] = {
    "protonet": lambda compiled: ProtoNet(compiled(Conv4(embed_only=True))),
    "blackbox": lambda compiled: BlackBoxAdaptation(compiled(Conv4(embed_only=True)), feature_dim=64),
    "maml_first_order": lambda compiled: MAML(compiled(Conv4()), inner_lr=0.4, meta_gradient="first_order"),
    "maml_second_order": lambda compiled: MAML(compiled(Conv4()), inner_lr=0.4),
}


def step_fn(model: pl.LightningModule, batch: TaskBatch) -> Callable[[], float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model.objective(batch).loss
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def timed_call(step: Callable[[], float]) -> tuple[float, float]:
    """(seconds, loss) of one call."""
    start = time.perf_counter()
    loss = step()
    return time.perf_counter() - start, loss


def alternating(a: Callable[[], float], b: Callable[[], float], steps: int) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, called in turn (machine load drifts the same for both)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return tuple(sorted(t)[len(t) // 2] for t in times)  # type: ignore[return-value]


def compare(name: str, batch: TaskBatch, steps: int) -> dict:
    torch._dynamo.reset()  # no graph cached by an earlier case (the Conv-4 encoders are the same code)
    torch.manual_seed(0)
    eager = LEARNERS[name](lambda m: m).to(batch.support_x.device)
    torch.manual_seed(0)
    compiled = LEARNERS[name](torch.compile).to(batch.support_x.device)
    eager_step, compiled_step = step_fn(eager, batch), step_fn(compiled, batch)
    eager_first, loss_eager = timed_call(eager_step)
    try:
        compiled_first, loss_compiled = timed_call(compiled_step)
    except Exception as error:  # noqa: BLE001 - the point is to record what fails
        return {"case": name, "compiles": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    eager_s, compiled_s = alternating(eager_step, compiled_step, steps)
    return {"case": name, "compiles": True, "compile_s": round(compiled_first - eager_first, 1),
            "eager_step_s": eager_s, "compiled_step_s": compiled_s, "speedup": eager_s / compiled_s,
            "first_loss_relative_difference": abs(loss_compiled - loss_eager) / abs(loss_eager)}


class PlainModule(pl.LightningModule):
    """A plain LightningModule (no lightning_meta) that logs its loss, as most do."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def whole_module(name: str) -> dict:
    """``torch.compile`` of the whole LightningModule, fitted for two steps."""
    options = dict(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)
    try:
        if name == "plain":
            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
            pl.Trainer(**options).fit(torch.compile(PlainModule()), data)
        else:
            dm = EpisodicDataModule(SinusoidTasks(), meta_batch_size=2, train_episodes_per_epoch=8, val_episodes=0)
            pl.Trainer(**options).fit(torch.compile(MAML(MLP(), inner_lr=0.01, meta_gradient="first_order")), dm)
    except Exception as error:  # noqa: BLE001
        return {"case": f"lightning_module_{name}", "compiles": False,
                "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    return {"case": f"lightning_module_{name}", "compiles": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant, after the first")
    parser.add_argument("--tasks", type=int, default=4, help="tasks per meta-batch")
    parser.add_argument("--device", default="cpu", help="where the learners run (the whole-module cases: CPU)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")  # compile from scratch
    batch = TaskBatch(*(t.to(args.device) for t in omniglot_like(args.tasks)))
    rows = [compare(name, batch, args.steps) for name in LEARNERS]
    with torch._functorch.config.patch(donated_buffer=False):
        rows.append({**compare("maml_second_order", batch, args.steps), "case": "maml_second_order_no_donation"})
    rows += [whole_module("maml"), whole_module("plain")]
    print(f"{'case':28s} {'compiles':9s} {'compile s':>9s} {'speedup':>8s}  error")
    for row in rows:
        speed = f"{row['speedup']:.2f}x" if "speedup" in row else ""
        print(f"{row['case']:28s} {str(row['compiles']):9s} {row.get('compile_s', ''):>9} {speed:>8s}  "
              f"{row.get('error', '')[:90]}")
    save("compile", {"lightning_meta": lightning_meta.__version__, "lightning": pl.__version__,
                     "device": args.device, "tasks": args.tasks, "steps": args.steps, "rows": rows})
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
