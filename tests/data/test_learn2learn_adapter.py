import pytest
import torch
from conftest import index_dataset
from l2l import learn2learn, needs_l2l

from lightning_meta import EpisodicDataModule, Learn2LearnTasks
from lightning_meta.data.seeding import task_generator


def l2l_taskset(dataset, ways, samples):
    from learn2learn.data import MetaDataset, TaskDataset
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

    meta = MetaDataset(dataset)
    transforms = [NWays(meta, ways), KShots(meta, samples), LoadData(meta), RemapLabels(meta)]
    return TaskDataset(meta, task_transforms=transforms, num_tasks=-1)


@needs_l2l
def test_real_learn2learn_taskset_becomes_task_batches():
    assert learn2learn.__version__ == "0.2.0"
    data = index_dataset(classes=20, per_class=10)
    taskset = l2l_taskset(data, ways=5, samples=1 + 3)
    tasks = Learn2LearnTasks(taskset, taskset, taskset, ways=5, shots=1, queries=3)
    dm = EpisodicDataModule(tasks, meta_batch_size=4, train_episodes_per_epoch=8, val_episodes=4, seed=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (4, 5, 3) and batch.query_x.shape == (4, 15, 3)
    for t in range(4):
        s_ids, q_ids = batch.support_x[t, :, 0].long(), batch.query_x[t, :, 0].long()
        assert not set(s_ids.tolist()) & set(q_ids.tolist())
        assert sorted(batch.support_y[t].tolist()) == list(range(5))
        for y in range(5):  # one original class per label
            classes = set((s_ids[batch.support_y[t] == y] % 20).tolist() + (q_ids[batch.query_y[t] == y] % 20).tolist())
            assert len(classes) == 1
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch.query_x, again.query_x)  # seeded through python's random


def test_adapter_splits_by_label_and_checks_shapes():
    tasks = Learn2LearnTasks(object.__new__(type("T", (), {"sample": lambda self: None})), ways=2, shots=1, queries=2)
    data = torch.arange(6.0)[:, None]
    labels = torch.tensor([7, 3, 7, 3, 3, 7])
    sx, sy, qx, qy = tasks.split_task(data, labels, task_generator(0, "train", 0, 0))
    assert sx.shape == (2, 1) and qx.shape == (4, 1)
    pairs = {(int(y), int(labels[int(x)])) for x, y in zip(torch.cat([sx, qx])[:, 0], torch.cat([sy, qy]))}
    assert len(pairs) == 2 and {y for y, _ in pairs} == {0, 1}  # one original class per label
    with pytest.raises(ValueError, match="expected ways=2 classes with shots \\+ queries = 3 each"):
        tasks.split_task(data, torch.tensor([0, 0, 1, 1, 1, 1]), task_generator(0, "train", 0, 0))
    with pytest.raises(TypeError, match="must have a .sample\\(\\) method"):
        Learn2LearnTasks([1, 2])
