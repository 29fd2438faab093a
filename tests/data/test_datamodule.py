import re

import pytest
import torch
from conftest import index_dataset, run_script, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from recorder import Recorder, task_ids

from lightning_meta import ClassificationTasks, EpisodicDataModule, SinusoidTasks, TaskBatch


def tasks():
    return ClassificationTasks(index_dataset(), ways=3, shots=1, queries=2, split_fractions=(0.5, 0.25, 0.25))


def all_tasks(loader):
    return [t for batch in loader for t in task_ids(batch)]


def make_dm(**kw):
    kw = {"meta_batch_size": 2, "train_episodes_per_epoch": 8, "val_episodes": 7, "test_episodes": 9,
          "eval_meta_batch_size": 2, "seed": 11, **kw}
    dm = EpisodicDataModule(tasks(), **kw)
    dm.setup()
    return dm


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_eval_episodes_identical_across_workers(start_method):
    a, b = make_dm(num_workers=0), make_dm(num_workers=2, worker_start_method=start_method)
    assert all_tasks(a.val_dataloader()) == all_tasks(b.val_dataloader())
    assert all_tasks(a.test_dataloader()) == all_tasks(b.test_dataloader())
    assert all_tasks(a.train_dataloader()) == all_tasks(b.train_dataloader())
    assert len(all_tasks(a.val_dataloader())) == 7 and len(all_tasks(a.test_dataloader())) == 9


def test_workers_start_by_fork_in_one_process():
    """``worker_start_method="auto"`` (the default) is fork in a process that is not a distributed rank (as a plain
    PyTorch DataLoader on Linux), and the loader's workers really are started by it (the DDP rule:
    tests/integration/test_workers.py)."""
    dm = make_dm(num_workers=2)
    loader = dm.train_dataloader()
    assert dm.worker_start_method == "auto" and dm.start_method == "fork"
    assert loader.multiprocessing_context.get_start_method() == "fork"
    assert make_dm(num_workers=0).train_dataloader().multiprocessing_context is None  # no workers, no context


def test_eval_episodes_fixed_by_seed_and_batching():
    base = all_tasks(make_dm().val_dataloader())
    assert all_tasks(make_dm(eval_meta_batch_size=5).val_dataloader()) == base
    assert all_tasks(make_dm(seed=12).val_dataloader()) != base


def test_train_stream_changes_with_epoch_and_batches_are_tasks():
    dm = make_dm()
    loader = dm.train_dataloader()
    assert len(loader) == 4
    first = all_tasks(loader)
    loader.sampler.set_epoch(1)
    second = all_tasks(loader)
    assert len(first) == 8 and first != second
    batch = next(iter(loader))
    assert isinstance(batch, TaskBatch) and batch.num_tasks == 2
    # meta-batch 4 covers exactly the tasks of two meta-batches of 2
    assert all_tasks(make_dm(meta_batch_size=4).train_dataloader()) == first


def test_fewer_eval_episodes_than_ranks_is_a_clear_error_on_every_rank(tmp_path):
    """One validation episode on two ranks: a ValueError naming val_episodes and the ranks, raised by each rank
    before any training step (it used to end in a zero-length loader and a stopped run)."""
    failed = run_script("ddp_data.py", str(tmp_path), "ddp", "one-val-episode", check=False)
    assert failed.returncode != 0
    message = "val_episodes=1 is fewer than the 2 ranks of this run: every rank needs an episode"
    assert failed.stderr.count(message) >= 2, failed.stderr[-3000:]
    assert not list(tmp_path.glob("rank*.pt"))
    assert re.search(r'datamodule\.py", line \d+, in setup', failed.stderr)  # at setup, before any step


def test_ddp_shards_union_is_the_set_and_train_tasks_distinct(tmp_path):
    run_script("ddp_data.py", str(tmp_path), "ddp")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    single = make_dm()
    for split, loader in (("val", single.val_dataloader()), ("test", single.test_dataloader())):
        union = [t for r in ranks for batch in r[split] for t in batch]
        per_epoch = len(all_tasks(loader))
        expected = all_tasks(loader)
        # validation ran once per epoch (2 epochs), test once
        runs = 2 if split == "val" else 1
        assert sorted(union) == sorted(expected * runs) and len(union) == per_epoch * runs
    train = [[t for batch in r["train"] for t in batch] for r in ranks]
    assert not set(train[0]) & set(train[1])
    # both ranks together saw what one device with meta-batch 4 sees, per epoch
    one_device = make_dm(meta_batch_size=4).train_dataloader()
    epoch0 = all_tasks(one_device)
    n = len(epoch0) // 2
    assert sorted(train[0][:n] + train[1][:n]) == sorted(epoch0)


def fit(dm, max_steps, tmp_path, ckpt_path=None, callbacks=()):
    model = Recorder()
    trainer = tiny_trainer(accelerator="auto", devices="auto",  # Lightning's defaults, as this test always had
                           max_steps=max_steps, default_root_dir=tmp_path,
                           num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
                           enable_checkpointing=bool(callbacks))
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model


def test_resume_mid_epoch_continues_the_task_stream(tmp_path):
    full = fit(make_dm(train_episodes_per_epoch=12), 10, tmp_path / "a").seen["train"]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    fit(make_dm(train_episodes_per_epoch=12), 4, tmp_path / "b", callbacks=[ckpt])
    path = next((tmp_path / "ckpt").glob("*step=4.ckpt"))
    assert torch.load(path, weights_only=False)["EpisodicDataModule"]["batches_done"] == 4
    resumed = fit(make_dm(train_episodes_per_epoch=12), 10, tmp_path / "c", ckpt_path=path).seen["train"]
    assert resumed == full[4:]


def test_resume_with_another_seed_is_refused():
    dm = make_dm()
    with pytest.raises(ValueError, match="differs from this DataModule's seed 11"):
        dm.load_state_dict({"seed": 3, "epoch": 0, "batches_done": 1})


@pytest.mark.parametrize("kwargs, message", [
    (dict(meta_batch_size=0), "meta_batch_size must be an integer >= 1, got 0"),
    (dict(val_episodes=-1), "val_episodes must be an integer >= 0, got -1"),
    (dict(num_workers=-2), "num_workers must be an integer >= 0, got -2"),
    (dict(worker_start_method="thread"), r"worker_start_method must be one of \[.*'forkserver'.*\] on this "
                                         "platform, got 'thread'"),
])
def test_bad_datamodule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodicDataModule(SinusoidTasks(), **kwargs)


def test_setup_rejects_ways_the_split_cannot_provide():
    dm = EpisodicDataModule(ClassificationTasks(index_dataset(), ways=8, shots=1, queries=1,
                                                split_fractions=(0.8, 0.1, 0.1)))
    with pytest.raises(ValueError, match="ways=8 is larger than the 2 classes of the 'val' split"):
        dm.setup("fit")


def test_non_task_source_rejected():
    with pytest.raises(TypeError, match="tasks must be a lightning_meta TaskSource, got list"):
        EpisodicDataModule([1, 2, 3])
