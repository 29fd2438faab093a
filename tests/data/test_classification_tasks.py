import pickle
import threading

import pytest
import torch
from conftest import ListDataset, index_dataset, mixed_sizes, tiny_trainer
from torch.utils.data import Dataset, TensorDataset

from lightning_meta.data import ClassificationTasks, TaskBatch
from lightning_meta.data.classification import class_table
from lightning_meta.data.seeding import task_generator


def gens(n, split="train", seed=0):
    return [task_generator(seed, split, 0, i) for i in range(n)]


def make(ways=5, shots=2, queries=3, **kw):
    tasks = ClassificationTasks(index_dataset(), ways=ways, shots=shots, queries=queries,
                                split_fractions=kw.pop("split_fractions", (0.5, 0.25, 0.25)), **kw)
    tasks.setup()
    return tasks


def test_shapes_labels_and_counts():
    tasks = make()
    batch = tasks.sample("train", gens(7))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (7, 10, 3) and batch.support_y.shape == (7, 10)
    assert batch.query_x.shape == (7, 15, 3) and batch.query_y.shape == (7, 15)
    for t in range(7):
        assert torch.bincount(batch.support_y[t], minlength=5).tolist() == [2] * 5
        assert torch.bincount(batch.query_y[t], minlength=5).tolist() == [3] * 5


def test_support_query_disjoint_and_labels_consistent():
    tasks = make()
    batch = tasks.sample("train", gens(20))
    for t in range(20):
        s_ids = batch.support_x[t, :, 0].long()
        q_ids = batch.query_x[t, :, 0].long()
        assert not set(s_ids.tolist()) & set(q_ids.tolist())
        # one original class per remapped label, the same in support and query
        mapping = {}
        for ids, labels in ((s_ids, batch.support_y[t]), (q_ids, batch.query_y[t])):
            for i, y in zip(ids.tolist(), labels.tolist()):
                assert mapping.setdefault(y, i % 20) == i % 20
        assert len(set(mapping.values())) == 5
        assert set(mapping.values()) <= set(tasks.split_labels("train"))


def test_label_order_random_per_task():
    tasks = make()
    batch = tasks.sample("train", gens(50))
    # the original class given label 0 is not always the smallest one chosen
    smallest_is_zero = 0
    for t in range(50):
        ids = batch.support_x[t, :, 0].long() % 20
        by_label = {int(y): int(c) for y, c in zip(batch.support_y[t], ids)}
        smallest_is_zero += by_label[0] == min(by_label.values())
    assert 0 < smallest_is_zero < 30  # about 1/5 of 50 under a uniform order


def test_splits_disjoint_and_cover_classes():
    tasks = make()
    sets = [set(tasks.split_labels(s)) for s in ("train", "val", "test")]
    assert sum(map(len, sets)) == 20 and len(set.union(*sets)) == 20
    for split, classes in zip(("train", "val", "test"), sets):
        batch = tasks.sample(split, gens(10, split))
        used = set((batch.support_x[..., 0].long() % 20).reshape(-1).tolist())
        assert used <= classes


def test_explicit_splits_and_same_seed_same_tasks():
    splits = {"train": list(range(10)), "val": list(range(10, 15)), "test": list(range(15, 20))}
    tasks = make(splits=splits)
    assert tasks.split_labels("val") == list(range(10, 15))
    a, b = tasks.sample("test", gens(4, "test")), tasks.sample("test", gens(4, "test"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_unequal_class_sizes_are_sampled_within_bounds():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([5, 9, 6, 12, 7, 5])])
    data = TensorDataset(torch.arange(len(labels)).float()[:, None], labels)
    tasks = ClassificationTasks(data, ways=3, shots=2, queries=3, splits={"train": [0, 1, 2, 3, 4, 5]})
    tasks.setup()
    batch = tasks.sample("train", gens(30))
    ids = torch.cat([batch.support_x, batch.query_x], 1)[..., 0].long()
    for t in range(30):
        assert len(set(ids[t].tolist())) == 15  # no example twice in a task


def test_class_table_matches_python_loop():
    labels = torch.tensor([3, 1, 3, 7, 1, 3, 7])
    classes, examples, counts = class_table(labels)
    assert classes.tolist() == [1, 3, 7] and counts.tolist() == [2, 3, 2]
    assert examples.tolist() == [[1, 4, -1], [0, 2, 5], [3, 6, -1]]



def test_generic_dataset_in_memory_and_lazy_agree():
    items = [(torch.full((2,), float(i)), i % 10) for i in range(100)]
    batches = []
    for in_memory in (True, False):
        tasks = ClassificationTasks(ListDataset(items), ways=2, shots=1, queries=2, in_memory=in_memory,
                                    split_fractions=(0.6, 0.2, 0.2))
        tasks.setup()
        batches.append(tasks.sample("train", gens(3)))
    assert all(torch.equal(x, y) for x, y in zip(*batches))


def test_uint8_inputs_scaled_to_unit_interval():
    data = TensorDataset(torch.full((40, 1, 2, 2), 255, dtype=torch.uint8), torch.arange(40) % 4)
    tasks = ClassificationTasks(data, ways=2, shots=1, queries=1, splits={"train": [0, 1], "val": [2, 3]})
    tasks.setup()
    batch = tasks.sample("train", gens(1))
    assert batch.support_x.dtype == torch.float32 and torch.all(batch.support_x == 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ways=15), "ways=15 is larger than the 14 classes of the 'train' split"),
        (dict(shots=6, queries=5), "shots + queries = 6 + 5 = 11 exceeds the 10 examples of class"),
        (dict(splits={"train": [1, 2], "val": [2, 3]}), "class 2 is in both the 'train' and 'val' splits"),
        (dict(splits={"train": [1], "dev": [2]}), "splits has unknown keys ['dev']"),
        (dict(split_fractions=(0.5, 0.6, 0.2)), "split_fractions must be three non-negative numbers"),
        (dict(ways=1), "ways must be an integer >= 2, got 1"),
        (dict(shots=0), "shots must be an integer >= 1, got 0"),
    ],
)
def test_bad_input_raises_named_error(kwargs, message):
    ways = kwargs.pop("ways", 2)
    with pytest.raises(ValueError) as info:
        tasks = ClassificationTasks(index_dataset(), ways=ways, **{"shots": 1, "queries": 1, **kwargs})
        tasks.setup()
    assert message in str(info.value)


def test_empty_dataset_and_non_integer_labels():
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the dataset is empty"):
        ClassificationTasks(empty, ways=2, shots=1, queries=1).setup()
    floats = TensorDataset(torch.zeros(4, 3), torch.tensor([0.0, 1.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"label at position 1 is 1\.5"):
        ClassificationTasks(floats, ways=2, shots=1, queries=1).setup()
    names = ListDataset([(torch.zeros(1), "cat"), (torch.zeros(1), "dog")])
    with pytest.raises(ValueError, match="label at position 0 is 'cat'"):
        ClassificationTasks(names, ways=2, shots=1, queries=1).setup()



def test_images_of_different_sizes_name_the_indices_shapes_and_fix():
    with pytest.raises(ValueError) as info:
        ClassificationTasks(mixed_sizes(), ways=2, shots=1, queries=1).setup()
    message = str(info.value)
    for part in ("dataset[0] is (1, 28, 28)", "dataset[7] is (1, 32, 32)", "resizes every image to one size",
                 "image_size"):
        assert part in message, message
    assert "stack expects" not in message
    lazy = ClassificationTasks(mixed_sizes(), ways=10, shots=2, queries=2, in_memory=False,
                               splits={"train": list(range(10))})
    lazy.setup()  # nothing is stacked at setup; a task holding example 7 (here every task holds all 40) names it
    with pytest.raises(ValueError, match=r"dataset\[7\] is \(1, 32, 32\)"):
        lazy.sample("train", gens(1))


class LockedDataset(Dataset):
    """A dataset that does not pickle (it holds a lock), as one holding an open file or a database handle."""

    def __init__(self, n: int = 120, classes: int = 12):
        self.lock = threading.Lock()
        self.x, self.y = torch.randn(n, 3), torch.arange(n) % classes

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        with self.lock:
            return self.x[i], int(self.y[i])


def test_in_memory_tasks_pickle_without_their_dataset():
    tasks = ClassificationTasks(LockedDataset(), ways=3, shots=2, queries=2, split_fractions=(0.5, 0.25, 0.25))
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(tasks)  # before setup the dataset is still needed, so it is still pickled
    tasks.setup()
    blob = pickle.dumps(tasks)
    assert b"LockedDataset" not in blob
    copy = pickle.loads(blob)
    assert copy.dataset is None and tasks.dataset is not None  # the original keeps its dataset
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(copy.sample(split, gens(2)), tasks.sample(split, gens(2))))
    lazy = ClassificationTasks(LockedDataset(), ways=3, shots=2, queries=2, in_memory=False,
                               split_fractions=(0.5, 0.25, 0.25))
    lazy.setup()
    with pytest.raises(TypeError, match="lock"):
        pickle.dumps(lazy)  # in_memory=False reads the dataset in every worker


def test_in_memory_tasks_over_an_unpicklable_dataset_train_with_forkserver_workers():
    """A real fit with 2 forkserver workers (each receives the task source by pickling): it runs to the end."""
    from lightning_meta import EpisodicDataModule, ProtoNet
    from lightning_meta.models import MLP

    tasks = ClassificationTasks(LockedDataset(), ways=3, shots=2, queries=2, split_fractions=(0.5, 0.25, 0.25))
    dm = EpisodicDataModule(tasks, meta_batch_size=2, train_episodes_per_epoch=8, val_episodes=4, test_episodes=0,
                            num_workers=2, worker_start_method="forkserver")
    model = ProtoNet(MLP(in_features=3, out_features=8, hidden=(8,)))
    trainer = tiny_trainer(max_steps=4)
    trainer.fit(model, dm)
    assert trainer.global_step == 4 and dm.start_method == "forkserver"
    assert b"LockedDataset" not in pickle.dumps(dm.tasks)
