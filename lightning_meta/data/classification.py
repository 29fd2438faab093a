"""N-way K-shot classification tasks from any labeled map-style dataset."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_meta.checks import check_positive
from lightning_meta.data.episodes import TaskBatch
from lightning_meta.data.sources import SPLITS, TaskSource


def read_labels(dataset: Any) -> torch.Tensor:
    """Integer labels of a map-style dataset, read once (``targets`` attribute, or item ``[1]``)."""
    raw = getattr(dataset, "targets", None)
    if raw is None and isinstance(dataset, TensorDataset):
        raw = dataset.tensors[1]
    if raw is None:
        raw = [dataset[i][1] for i in range(len(dataset))]
    return as_integer_labels(raw)


def as_integer_labels(raw: Any) -> torch.Tensor:
    """``raw`` as an int64 tensor; a non-integer label raises a ``ValueError`` naming it."""
    if isinstance(raw, torch.Tensor) and not raw.is_floating_point() and not raw.is_complex():
        return raw.reshape(-1).long()
    values = raw.reshape(-1).tolist() if isinstance(raw, torch.Tensor) else list(raw)
    return torch.tensor([_integer_label(v, i) for i, v in enumerate(values)], dtype=torch.long)


def _integer_label(value: Any, position: int) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        raise ValueError(
            f"labels must be integers; the label at position {position} is {value!r} "
            f"({type(value).__name__}). Map class names to ints, or pass integer `labels=`."
        )
    return int(value)


def class_table(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(classes [C], examples [C, E_max] padded with -1, counts [C])``, built without a Python loop."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_class = inverse[order]
    position = torch.arange(len(order)) - starts[sorted_class]
    examples = torch.full((len(classes), int(counts.max())), -1, dtype=torch.long)
    examples[sorted_class, position] = order
    return classes, examples, counts


class ClassificationTasks(TaskSource):
    """N-way K-shot tasks from any labeled map-style dataset, with class-disjoint splits.

    Labels are read once (``dataset.targets``, the second tensor of a ``TensorDataset``, or item ``[1]``),
    or given as ``labels``. Classes are split into meta-train / meta-val / meta-test either explicitly
    (``splits={"train": [...], "val": [...], "test": [...]}``, original label values) or by
    ``split_fractions`` of a seeded permutation of the classes. In every task the ``ways`` chosen classes
    get the labels ``0..ways-1`` in a random order, and the support and query sets are shuffled.
    ``train_ways`` (optional) gives the meta-training split's tasks another number of ways than validation and
    test (Prototypical Networks train Omniglot 5-way models on 60-way tasks).

    With ``in_memory=True`` (default) the inputs are stacked into one tensor at ``setup`` and a batch is a
    single gather (no per-example Python loop); ``uint8`` inputs are scaled to ``[0, 1]`` float32. They must
    all have one shape (inputs of different shapes are a ``ValueError`` naming two of them). Once set up, the
    task source pickles without ``dataset`` (``spawn``/``forkserver`` workers receive only the tensor), so the
    dataset itself need not pickle.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(200, 3), torch.arange(200) % 20)
        >>> tasks = ClassificationTasks(data, ways=5, shots=1, queries=2, split_fractions=(0.5, 0.25, 0.25))
        >>> tasks.setup()
        >>> batch = tasks.sample("train", [torch.Generator().manual_seed(0)])
        >>> batch.support_x.shape, batch.query_y.shape
        (torch.Size([1, 5, 3]), torch.Size([1, 10]))
    """

    task_type = "classification"

    def __init__(
        self,
        dataset: Dataset | None = None,
        labels: Sequence[int] | None = None,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        splits: dict[str, list[int]] | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        in_memory: bool = True,
        train_ways: int | None = None,
    ) -> None:
        check_positive("ways", ways, 2)
        if train_ways is not None:
            check_positive("train_ways", train_ways, 2)
        self.train_ways = train_ways
        check_positive("shots", shots)
        check_positive("queries", queries)
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.labels = labels
        self.split_seed = split_seed
        self.in_memory = in_memory
        self.splits = _check_splits(splits) if splits is not None else None
        self.split_fractions = _check_fractions(split_fractions)
        self._ready = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        if self._ready:
            return
        inputs, labels = self._load()
        self._inputs = inputs
        self._classes, self._examples, self._counts = class_table(labels)
        self._split_classes = self._make_splits()
        self._ready = True
        for split in SPLITS:
            if len(self._split_classes[split]):
                self.validate_split(split)

    def _load(self) -> tuple[Any, torch.Tensor]:
        """Inputs (a tensor, or the dataset itself when not in memory) and int64 labels."""
        if self.dataset is None:
            raise ValueError(f"{type(self).__name__} needs a `dataset`")
        n = len(self.dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError(f"{type(self).__name__}: the dataset is empty (0 examples); tasks need labeled data")
        labels = as_integer_labels(self.labels) if self.labels is not None else read_labels(self.dataset)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but the dataset has {n} examples")
        if not self.in_memory:
            return self.dataset, labels
        if isinstance(self.dataset, TensorDataset):
            return self.dataset.tensors[0], labels
        return _stack_inputs([torch.as_tensor(self.dataset[i][0]) for i in range(n)], range(n)), labels

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (e.g. for ``spawn``/``forkserver`` DataLoader workers) without ``dataset`` once ``setup``
        has loaded its inputs into one tensor (``in_memory=True``): sampling reads only that tensor, so an
        unpicklable or large dataset does not travel to every worker."""
        state = self.__dict__.copy()
        if state.get("_ready") and self.in_memory and isinstance(state.get("_inputs"), torch.Tensor):
            state["dataset"] = None
        return state

    def _make_splits(self) -> dict[str, torch.Tensor]:
        """Class *positions* (rows of the class table) for each split."""
        position_of = {int(c): i for i, c in enumerate(self._classes.tolist())}
        if self.splits is not None:
            out = {}
            for split in SPLITS:
                missing = [c for c in self.splits.get(split, []) if c not in position_of]
                if missing:
                    raise ValueError(f"splits[{split!r}] names classes not in the labels: {missing[:5]}")
                out[split] = torch.tensor([position_of[c] for c in self.splits.get(split, [])], dtype=torch.long)
            return out
        perm = torch.randperm(len(self._classes), generator=torch.Generator().manual_seed(self.split_seed))
        n_train = round(self.split_fractions[0] * len(perm))
        n_val = round(self.split_fractions[1] * len(perm))
        return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}

    def validate_split(self, split: str) -> None:
        """Raise a ``ValueError`` unless ``split`` can provide the configured tasks."""
        self.check_split(split, self.ways_of(split), self.shots, self.queries)

    def ways_of(self, split: str) -> int:
        """Ways of ``split``'s tasks: ``train_ways`` for training if set (e.g. ProtoNet's 60-way training for
        5-way evaluation), else ``ways``."""
        return self.train_ways if split == "train" and self.train_ways is not None else self.ways

    def check_split(self, split: str, ways: int, shots: int, queries: int) -> None:
        """Raise a ``ValueError`` unless ``split`` can provide ``ways``-way ``shots+queries`` tasks."""
        pool = self._split_classes[split]
        if len(pool) == 0:
            raise ValueError(f"the {split!r} split has no classes; give it classes via `splits` or `split_fractions`")
        if ways > len(pool):
            raise ValueError(
                f"ways={ways} is larger than the {len(pool)} classes of the {split!r} split; "
                f"use ways <= {len(pool)} or give that split more classes"
            )
        counts = self._counts[pool]
        smallest = int(counts.argmin())
        if shots + queries > int(counts[smallest]):
            label = int(self._classes[pool[smallest]])
            raise ValueError(
                f"shots + queries = {shots} + {queries} = {shots + queries} exceeds the {int(counts[smallest])} "
                f"examples of class {self.class_name(label)!r} in the {split!r} split; "
                f"use shots + queries <= {int(counts.min())}"
            )

    def class_name(self, label: int) -> str:
        """A readable name of an original class label (subclasses map ids to names)."""
        return str(label)

    def num_classes(self, split: str) -> int:
        """Number of classes in ``split`` (after ``setup()``)."""
        return len(self._split_classes[split])

    def split_labels(self, split: str) -> list[int]:
        """The original labels of the classes in ``split``."""
        return self._classes[self._split_classes[split]].tolist()

    # --------------------------------------------------------------- sampling
    def sample(self, split: str, generators: list[torch.Generator]) -> TaskBatch:
        if not self._ready:
            self.setup()
        n, k, q = self.ways_of(split), self.shots, self.queries
        pool = self._split_classes[split]
        width = self._examples.shape[1]
        base_s = torch.arange(n).repeat_interleave(k)
        base_q = torch.arange(n).repeat_interleave(q)
        s_idx, q_idx, s_lab, q_lab = [], [], [], []
        for g in generators:
            chosen = pool[torch.randperm(len(pool), generator=g)[:n]]
            keys = torch.rand(n, width, generator=g).masked_fill_(self._examples[chosen] < 0, 2.0)
            picked = self._examples[chosen[:, None], keys.argsort(dim=1)[:, : k + q]]
            ps, pq = torch.randperm(n * k, generator=g), torch.randperm(n * q, generator=g)
            s_idx.append(picked[:, :k].reshape(-1)[ps])
            q_idx.append(picked[:, k:].reshape(-1)[pq])
            s_lab.append(base_s[ps])
            q_lab.append(base_q[pq])
        support, query = torch.stack(s_idx), torch.stack(q_idx)
        return TaskBatch(self._fetch(support), torch.stack(s_lab), self._fetch(query), torch.stack(q_lab))

    def _fetch(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self._inputs, torch.Tensor):
            x = self._inputs[index]
        else:
            positions = index.reshape(-1).tolist()
            flat = [torch.as_tensor(self._inputs[i][0]) for i in positions]
            x = _stack_inputs(flat, positions).reshape(*index.shape, *flat[0].shape)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _stack_inputs(inputs: list[torch.Tensor], positions: Sequence[int]) -> torch.Tensor:
    """``torch.stack(inputs)``; inputs of different shapes are a ``ValueError`` naming the first two dataset indices
    (``positions``) whose shapes differ, and the fix."""
    first = inputs[0].shape
    for position, x in zip(positions, inputs):
        if x.shape != first:
            raise ValueError(
                f"ClassificationTasks stacks the dataset's inputs into one tensor, but they differ in shape: "
                f"dataset[{positions[0]}] is {tuple(first)} and dataset[{position}] is {tuple(x.shape)}. Give the "
                f"dataset a transform that "
                f"resizes every image to one size (e.g. {tuple(first)}), or use a task source with an `image_size` "
                f"argument (MiniImageNetTasks, CIFARFSTasks, OmniglotTasks, ...), which resizes for you"
            )
    return torch.stack(inputs)


def _check_splits(splits: dict[str, list[int]]) -> dict[str, list[int]]:
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits has unknown keys {sorted(unknown)}; valid keys are {list(SPLITS)}")
    seen: dict[int, str] = {}
    for split, classes in splits.items():
        for c in classes:
            if c in seen and seen[c] != split:
                raise ValueError(f"class {c!r} is in both the {seen[c]!r} and {split!r} splits; they must be disjoint")
            seen[c] = split
    return {k: [int(c) for c in v] for k, v in splits.items()}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(f < 0 for f in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split_fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions!r}"
        )
    return values  # type: ignore[return-value]
