"""Describing a variable episode as Meta-Dataset does (Triantafillou et al., ICLR 2020, Appendix).

An episode *description* says which classes an episode uses, how many support examples each class gets and how many
query examples every class gets; which examples fill it is the next step's business. Every draw comes from one
``torch.Generator``, so with the package's counter-based seeding
(``task_generator(seed, split, epoch, index)``) a description is a pure function of its episode key: the same on
every worker, rank and run.

The protocol, for the classes of one split with ``n_c`` examples each:

1. ways ``N`` uniform in ``[min_ways, min(max_ways_upper_bound, classes)]``, then ``N`` classes uniformly without
   replacement (with a class hierarchy, Omniglot's alphabets: first a group uniformly among the groups with at least
   ``min_ways`` classes, then ``N`` in ``[min_ways, min(max_ways_upper_bound, len(group))]`` classes of that group);
2. query examples per class ``Q = min(max_num_query, min_c floor(n_c / 2))``, the same for every class;
3. support set size ``S = min(max_support_set_size, sum_c (floor(beta * min(max_support_size_contrib_per_class,
   n_c - Q)) + 1))`` with one ``beta ~ U[0, 1)`` per episode;
4. support examples of class ``c``: ``min(n_c - Q, floor(p_c * (S - N)) + 1)`` with
   ``p_c ∝ n_c * exp(U[min_log_weight, max_log_weight])``, drawn independently per class.

The draws happen in that order (group, ways, classes, beta, log-weights), so a description is reproducible from the
generator's seed alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_meta.checks import check_positive

__all__ = [
    "EpisodeDescription",
    "EpisodeSampling",
    "check_groups",
    "compute_query_count",
    "omniglot_groups",
    "sample_episode",
    "sample_support_counts",
    "sample_support_size",
    "sample_ways",
]


@dataclass(frozen=True)
class EpisodeSampling:
    """The constants of Meta-Dataset's variable episodes; the defaults are the paper's (``data_config_common.gin``).

    Args:
        min_ways: fewest classes in an episode.
        max_ways_upper_bound: most classes in an episode (fewer when a split or group has fewer classes).
        max_num_query: most query examples per class.
        max_support_set_size: most support examples in an episode, all classes together.
        max_support_size_contrib_per_class: most that one class adds to the support set *size* (not a cap on its
            own support count).
        min_log_weight, max_log_weight: range of the uniform log-weight that tilts each class's share of the
            support set away from its share of the examples (``log(0.5)`` and ``log(2)``: a factor in ``[0.5, 2]``).

    Every episode has ``ways <= max_ways_upper_bound <= max_support_set_size``, so every class gets a support example.

    Examples:
        >>> s = EpisodeSampling()
        >>> s.min_ways, s.max_ways_upper_bound, s.max_num_query, s.max_support_set_size
        (5, 50, 10, 500)
        >>> s.max_query_size  # queries of the widest episode: the size a padded query set needs
        500
        >>> EpisodeSampling(min_ways=5, max_ways_upper_bound=4)
        Traceback (most recent call last):
        ...
        ValueError: max_ways_upper_bound must be an integer >= 5 (min_ways), got 4
    """

    min_ways: int = 5
    max_ways_upper_bound: int = 50
    max_num_query: int = 10
    max_support_set_size: int = 500
    max_support_size_contrib_per_class: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)

    def __post_init__(self) -> None:
        check_positive("min_ways", self.min_ways, 2)
        _check_at_least("max_ways_upper_bound", self.max_ways_upper_bound, self.min_ways, "min_ways")
        check_positive("max_num_query", self.max_num_query)
        _check_at_least("max_support_set_size", self.max_support_set_size, self.max_ways_upper_bound,
                        "max_ways_upper_bound, so that every class of the widest episode gets a support example")
        check_positive("max_support_size_contrib_per_class", self.max_support_size_contrib_per_class)
        for name in ("min_log_weight", "max_log_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.min_log_weight > self.max_log_weight:
            raise ValueError(f"min_log_weight must be <= max_log_weight, got min_log_weight={self.min_log_weight!r} "
                             f"> max_log_weight={self.max_log_weight!r}")

    @property
    def max_query_size(self) -> int:
        """Most query examples in an episode: ``max_ways_upper_bound * max_num_query``."""
        return self.max_ways_upper_bound * self.max_num_query


@dataclass(frozen=True)
class EpisodeDescription:
    """What one variable episode holds: its classes, support examples per class, query examples per class.

    Args:
        classes: positions of the episode's classes among the split's classes, in the episode's order (label ``i``
            of the episode is ``classes[i]``).
        support_counts: support examples of each class, aligned with ``classes`` (imbalanced).
        query_count: query examples of every class (query sets are balanced).

    Examples:
        >>> d = EpisodeDescription(classes=(7, 2, 9), support_counts=(4, 1, 2), query_count=3)
        >>> d.ways, d.support_size, d.query_size
        (3, 7, 9)
    """

    classes: tuple[int, ...]
    support_counts: tuple[int, ...]
    query_count: int

    def __post_init__(self) -> None:
        classes, counts = tuple(int(c) for c in self.classes), tuple(int(k) for k in self.support_counts)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "support_counts", counts)
        if not classes or len(counts) != len(classes):
            raise ValueError(f"an episode needs >= 1 class and one support count per class, got {len(classes)} "
                             f"classes and {len(counts)} support counts")
        if len(set(classes)) != len(classes):
            raise ValueError(f"an episode's classes must be distinct, got {classes}")
        if min(counts) < 1:
            raise ValueError(f"every class needs >= 1 support example, got support_counts={counts}")
        check_positive("query_count", self.query_count)

    @property
    def ways(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def support_size(self) -> int:
        """Support examples, all classes together."""
        return sum(self.support_counts)

    @property
    def query_size(self) -> int:
        """Query examples, all classes together: ``ways * query_count``."""
        return self.ways * self.query_count


def sample_ways(num_classes: int, sampling: EpisodeSampling, generator: torch.Generator) -> int:
    """Ways of an episode: uniform in ``[min_ways, min(max_ways_upper_bound, num_classes)]``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sorted({sample_ways(7, EpisodeSampling(), g) for _ in range(100)})
        [5, 6, 7]
    """
    check_positive("num_classes", num_classes, 0)
    if num_classes < sampling.min_ways:
        raise ValueError(f"episodes need >= min_ways={sampling.min_ways} classes, but only {num_classes} are "
                         f"available; lower min_ways or give the split (or group) more classes")
    high = min(sampling.max_ways_upper_bound, num_classes)
    return int(torch.randint(sampling.min_ways, high + 1, (), generator=generator))


def compute_query_count(images_per_class: Sequence[int] | torch.Tensor, sampling: EpisodeSampling) -> int:
    """Query examples per class: ``min(max_num_query, min_c floor(images_per_class[c] / 2))``.

    At most half of the smallest class goes to the query set, so every class keeps at least as many examples for
    its support set. A class with fewer than 2 examples is a ``ValueError`` naming it (its position).

    Examples:
        >>> compute_query_count([20, 20, 20, 20, 20], EpisodeSampling())
        10
        >>> compute_query_count([20, 7, 300, 20, 20], EpisodeSampling())
        3
    """
    images = _as_counts("images_per_class", images_per_class)
    _check_two_each(images, "class")
    return min(sampling.max_num_query, int(images.min()) // 2)


def sample_support_size(
    remaining_per_class: Sequence[int] | torch.Tensor, sampling: EpisodeSampling, generator: torch.Generator
) -> int:
    """Support set size of an episode, from the examples each class has left after its queries.

    ``min(max_support_set_size, sum_c (floor(beta * min(max_support_size_contrib_per_class, remaining_c)) + 1))`` with
    ``beta ~ U[0, 1)`` drawn once: between ``ways`` (``beta`` near 0) and the capped total (``beta`` near 1).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sizes = [sample_support_size([10, 10, 10, 10, 10], EpisodeSampling(), g) for _ in range(200)]
        >>> min(sizes) >= 5, max(sizes) <= 50
        (True, True)
    """
    remaining = _as_counts("remaining_per_class", remaining_per_class)
    _check_support_inputs(remaining, sampling.max_support_set_size, "max_support_set_size")
    contributions = remaining.clamp(max=sampling.max_support_size_contrib_per_class).to(torch.float64)
    beta = torch.rand((), generator=generator, dtype=torch.float64)
    total = int(torch.floor(beta * contributions + 1.0).sum())
    return min(sampling.max_support_set_size, total)


def sample_support_counts(
    images_per_class: Sequence[int] | torch.Tensor,
    remaining_per_class: Sequence[int] | torch.Tensor,
    support_size: int,
    sampling: EpisodeSampling,
    generator: torch.Generator,
) -> tuple[int, ...]:
    """Support examples per class: ``min(remaining_c, floor(p_c * (support_size - ways)) + 1)``.

    ``p_c ∝ images_per_class_c * exp(u_c)``, ``u_c ~ U[min_log_weight, max_log_weight]`` independently: classes
    share the support set roughly as they share the data, tilted at random by a factor in ``[0.5, 2]``. Every class
    gets at least one example and never more than it has left; the counts add up to at most ``support_size``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> counts = sample_support_counts([20, 20, 100, 20, 20], [10, 10, 90, 10, 10], 60, EpisodeSampling(), g)
        >>> len(counts), min(counts) >= 1, sum(counts) <= 60, counts[2] == max(counts)
        (5, True, True, True)
    """
    images = _as_counts("images_per_class", images_per_class)
    remaining = _as_counts("remaining_per_class", remaining_per_class)
    if len(images) != len(remaining):
        raise ValueError(f"images_per_class ({len(images)} classes) and remaining_per_class ({len(remaining)}) "
                         f"must describe the same classes")
    check_positive("support_size", support_size, 0)
    _check_support_inputs(remaining, support_size, "support_size")
    too_many = torch.nonzero(remaining > images).flatten()
    if len(too_many):
        c = int(too_many[0])
        raise ValueError(f"class {c} has remaining_per_class={int(remaining[c])} > images_per_class={int(images[c])}")
    low, high = sampling.min_log_weight, sampling.max_log_weight
    log_weights = torch.rand(len(images), generator=generator, dtype=torch.float64) * (high - low) + low
    weights = images.to(torch.float64) * torch.exp(log_weights)
    shares = weights / weights.sum()
    desired = torch.floor(shares * (support_size - len(images))).long() + 1
    return tuple(torch.minimum(desired, remaining).tolist())


def sample_episode(
    images_per_class: Sequence[int] | torch.Tensor,
    sampling: EpisodeSampling,
    generator: torch.Generator,
    groups: Sequence[Sequence[int]] | None = None,
) -> EpisodeDescription:
    """Describe one Meta-Dataset episode over the classes of a split (``images_per_class[c]``: examples of class c).

    Ways, then classes uniformly without replacement; with ``groups`` (a class hierarchy such as Omniglot's
    alphabets, each group a list of class positions; see ``omniglot_groups``),
    first one group uniformly among those with at least ``min_ways`` classes (smaller groups are never chosen), then
    ways up to that group's size and classes of that group only. Then the query count, the support set size and the
    support counts (see the module's docstring for the formulas). Every class of the split needs >= 2 examples. Only
    the drawn group is checked here (checking them all would cost time linear in the classes, every episode): check
    the groups once with ``check_groups``.

    Examples:
        >>> from lightning_meta.data.seeding import task_generator
        >>> images = [20] * 30 + [60] * 30
        >>> d = sample_episode(images, EpisodeSampling(), task_generator(0, "train", 0, 7))
        >>> d == sample_episode(images, EpisodeSampling(), task_generator(0, "train", 0, 7))  # the key fixes it
        True
        >>> 5 <= d.ways <= 50, d.query_count, all(1 <= k <= images[c] - 10 for c, k in zip(d.classes, d.support_counts))
        (True, 10, True)
        >>> alphabets = [list(range(0, 4)), list(range(4, 24)), list(range(24, 60))]  # the first has < 5 classes
        >>> d = sample_episode(images, EpisodeSampling(), task_generator(0, "train", 0, 7), groups=alphabets)
        >>> any(set(d.classes) <= set(g) for g in alphabets[1:])
        True
    """
    images = _as_counts("images_per_class", images_per_class)
    _check_two_each(images, "class")  # every class, not only the chosen ones: an error must not depend on the draw
    if groups is None:
        ways = sample_ways(len(images), sampling, generator)
        classes = torch.randperm(len(images), generator=generator)[:ways]
    else:
        eligible = [i for i, group in enumerate(groups) if len(group) >= sampling.min_ways]
        if not eligible:
            raise ValueError(f"no group has >= min_ways={sampling.min_ways} classes (the largest has "
                             f"{max((len(g) for g in groups), default=0)}); lower min_ways or merge groups "
                             f"(e.g. omniglot_groups(..., rotations_together=True))")
        chosen_group = eligible[int(torch.randint(len(eligible), (), generator=generator))]
        group = list(groups[chosen_group])
        _check_group(chosen_group, group, len(images))  # the drawn group only: O(groups) per episode, not O(classes)
        ways = sample_ways(len(group), sampling, generator)
        classes = torch.tensor(group, dtype=torch.long)[torch.randperm(len(group), generator=generator)[:ways]]
    chosen = images[classes]
    query_count = compute_query_count(chosen, sampling)
    remaining = chosen - query_count
    support_size = sample_support_size(remaining, sampling, generator)
    counts = sample_support_counts(chosen, remaining, support_size, sampling, generator)
    return EpisodeDescription(tuple(classes.tolist()), counts, query_count)


def check_groups(groups: Sequence[Sequence[int]], num_classes: int) -> list[list[int]]:
    """``groups`` as lists, after checking every group: class positions in ``0..num_classes-1``, none twice in a group.

    ``sample_episode`` checks only the group it draws (checking all of them is linear in the classes, every
    episode); a task source calls this once at setup so that a bad group fails there, whatever the draws.

    Examples:
        >>> check_groups([(0, 1), (2,)], num_classes=3)
        [[0, 1], [2]]
        >>> check_groups([[0, 1], [1, 3]], num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: groups[1] must hold class positions in 0..2 (the positions in images_per_class), but holds 3
    """
    check_positive("num_classes", num_classes, 0)
    members = [list(group) for group in groups]
    for index, group in enumerate(members):
        _check_group(index, group, num_classes)
    return members


def omniglot_groups(class_names: Sequence[str], rotations_together: bool = False) -> list[list[int]]:
    """Omniglot's class hierarchy for ``sample_episode``: class positions by alphabet.

    ``class_names`` are ``Alphabet/characterNN/rotDDD`` (as ``OmniglotTasks.class_names`` and the Vinyals split
    files; ``Alphabet/characterNN`` is read as ``rot000``). Groups come in the order of their first class.

    By default every *rotated alphabet* is its own group (``Latin`` at 90 degrees is not ``Latin`` at 0): the
    reference samples Omniglot without rotations, one alphabet per episode, and a rotated alphabet is exactly such
    an alphabet, with the same number of characters, so an episode keeps the reference's fine-grained task (telling
    apart characters of one script drawn the same way) and the reference's ways distribution per group. With
    ``rotations_together=True`` an alphabet's four rotations form one group (four times larger: ways then reach 50
    in almost every alphabet, and an episode may hold one character at two rotations, an easier, orientation cue).
    A group with fewer than ``min_ways`` classes is never chosen (the Vinyals test split has one alphabet of 4
    characters: its 16 rotated classes appear only with ``rotations_together=True``).

    Examples:
        >>> names = ["Latin/character01/rot000", "Latin/character01/rot090", "Greek/character01/rot000",
        ...          "Latin/character02/rot000"]
        >>> omniglot_groups(names)
        [[0, 3], [1], [2]]
        >>> omniglot_groups(names, rotations_together=True)
        [[0, 1, 3], [2]]
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for position, name in enumerate(class_names):
        parts = name.split("/") if isinstance(name, str) else []
        valid = len(parts) in (2, 3) and all(parts) and (len(parts) == 2 or parts[2].startswith("rot"))
        if not valid:
            raise ValueError(f"class_names[{position}] = {name!r} is not an Omniglot class name "
                             f"'Alphabet/characterNN/rotDDD' (or 'Alphabet/characterNN')")
        rotation = "" if rotations_together else (parts[2] if len(parts) == 3 else "rot000")
        groups.setdefault((parts[0], rotation), []).append(position)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------------------- checks
def _check_at_least(name: str, value: int, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({what}), got {value!r}")


def _as_counts(name: str, values: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``values`` as a 1-D int64 tensor of non-negative integers, or a ``ValueError`` naming ``name``."""
    try:
        counts = values if isinstance(values, torch.Tensor) else torch.tensor(list(values))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {values!r:.80}") from error
    if counts.numel() == 0:
        raise ValueError(f"{name} is empty; an episode needs classes")
    if counts.dim() != 1 or counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got a {counts.dtype} tensor of shape "
                         f"{tuple(counts.shape)} ({values!r:.80})")
    counts = counts.long()
    negative = torch.nonzero(counts < 0).flatten()
    if len(negative):
        raise ValueError(f"{name} must be >= 0; {name}[{int(negative[0])}] is {int(counts[negative[0]])}")
    return counts


def _check_two_each(images: torch.Tensor, what: str) -> None:
    small = torch.nonzero(images < 2).flatten()
    if len(small):
        c = int(small[0])
        raise ValueError(f"{what} {c} has {int(images[c])} example(s); every class needs >= 2 (at least one support "
                         f"and one query example). Leave out classes with fewer than 2 examples")


def _check_support_inputs(remaining: torch.Tensor, bound: int, bound_name: str) -> None:
    empty = torch.nonzero(remaining < 1).flatten()
    if len(empty):
        raise ValueError(f"class {int(empty[0])} has no examples left for its support set (remaining_per_class="
                         f"{int(remaining[empty[0]])}); every class needs >= 1")
    if bound < len(remaining):
        raise ValueError(f"{bound_name}={bound} is smaller than the {len(remaining)} ways: every class needs a "
                         f"support example, so {bound_name} must be >= {len(remaining)}")


def _check_group(index: int, members: list, num_classes: int) -> None:
    bad = [c for c in members if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"groups[{index}] must hold class positions in 0..{num_classes - 1} (the positions in "
                         f"images_per_class), but holds {bad[0]!r}")
    if len(set(members)) != len(members):
        raise ValueError(f"groups[{index}] names a class more than once")
