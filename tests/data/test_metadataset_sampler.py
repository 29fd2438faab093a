"""Meta-Dataset episode descriptions against the paper's formulas, by simulation and exact computation.

Oracles: chi-square tests against uniform (the statistic is computed here; the critical values at p = 0.001 are
tabulated below and checked against ``scipy.stats.chi2.ppf`` when scipy is installed), the support set size's exact
distribution (an integral over beta, computed with fractions), and an independent numpy re-implementation of the
whole description (another generator, another code path) for the per-class support counts. Every draw is seeded, so
the tests are deterministic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lightning_meta.data import (
    EpisodeDescription,
    EpisodeSampling,
    check_groups,
    compute_query_count,
    omniglot_groups,
    sample_episode,
    sample_support_counts,
    sample_support_size,
    sample_ways,
)
from lightning_meta.data.omniglot import vinyals_split
from lightning_meta.data.seeding import task_generator

PAPER = EpisodeSampling()
#: chi-square critical values at p = 0.001 by degrees of freedom (scipy.stats.chi2.ppf(0.999, df))
CHI2_P001 = {2: 13.8155, 3: 16.2662, 4: 18.4668, 7: 24.3219, 25: 52.6197, 29: 58.3012, 45: 80.0767}
#: Kolmogorov-Smirnov critical value at p = 0.001, times sqrt(n) (asymptotic; conservative for a discrete law)
KS_P001 = math.sqrt(-math.log(0.001 / 2) / 2)


def chi_square(values: list[int], law: dict[int, float]) -> tuple[float, int]:
    """Pearson's statistic of ``values`` against the law ``{value: probability}``, and its degrees of freedom."""
    counts = np.array([sum(1 for v in values if v == c) for c in law], dtype=np.float64)
    assert counts.sum() == len(values), "a value fell outside the law's support"
    expected = len(values) * np.array([float(p) for p in law.values()])
    return float(((counts - expected) ** 2 / expected).sum()), len(law) - 1


def chi_square_uniform(values: list[int], cells: list[int]) -> tuple[float, int]:
    """Pearson's statistic of ``values`` against the uniform law on ``cells``, and its degrees of freedom."""
    return chi_square(values, {c: 1 / len(cells) for c in cells})


def episodes(images, n, seed=0, groups=None, sampling=PAPER, split="train"):
    return [sample_episode(images, sampling, task_generator(seed, split, 0, i), groups=groups) for i in range(n)]


def test_tabulated_critical_values_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, value in CHI2_P001.items():
        assert stats.chi2.ppf(0.999, df) == pytest.approx(value, abs=1e-3)


# --------------------------------------------------------------------------------------------------------------- ways
@pytest.mark.parametrize(("num_classes", "high"), [(100, 50), (30, 30), (7, 7)])
def test_ways_uniform_over_its_range_and_capped_by_the_classes(num_classes, high):
    g = torch.Generator().manual_seed(num_classes)
    ways = [sample_ways(num_classes, PAPER, g) for _ in range(100 * (high - 4))]
    cells = list(range(5, high + 1))
    statistic, df = chi_square_uniform(ways, cells)
    assert set(ways) == set(cells)
    assert statistic < CHI2_P001[df]


def test_ways_of_keyed_episodes_uniform_and_classes_uniform():
    found = episodes([20] * 30, 2000)
    statistic, df = chi_square_uniform([d.ways for d in found], list(range(5, 31)))
    assert statistic < CHI2_P001[df]
    # every class equally likely to be in an episode (the counts of one episode are negatively correlated, drawn
    # without replacement: the statistic is then smaller than chi-square's, the test conservative)
    statistic, df = chi_square_uniform([c for d in found for c in d.classes], list(range(30)))
    assert statistic < CHI2_P001[df]


def test_class_order_is_random():
    # the order of an episode's classes is its label order: with five classes, the first is uniform over them
    found = episodes([20] * 5, 1000, seed=2)
    statistic, df = chi_square_uniform([d.classes[0] for d in found], list(range(5)))
    assert statistic < CHI2_P001[df]


# -------------------------------------------------------------------------------------------------------- query count
@pytest.mark.parametrize(
    ("images", "sampling", "expected"),
    [
        ([20] * 5, PAPER, 10),
        ([21, 500, 40, 22, 30], PAPER, 10),
        ([19, 500, 40, 22, 30], PAPER, 9),
        ([7, 500, 40, 22, 30], PAPER, 3),
        ([500, 2, 40], PAPER, 1),
        ([3, 3, 3, 3, 3], PAPER, 1),
        ([100] * 5, EpisodeSampling(max_num_query=3), 3),
    ],
)
def test_query_count_closed_form(images, sampling, expected):
    assert compute_query_count(images, sampling) == expected
    assert compute_query_count(torch.tensor(images), sampling) == expected


def test_query_count_of_episodes_is_the_closed_form_over_their_classes():
    images = [2, 5, 9, 13, 21, 40, 300] * 6
    for d in episodes(images, 500):
        assert d.query_count == min(10, min(images[c] for c in d.classes) // 2)


# ------------------------------------------------------------------------------------------------- support set size
def exact_support_size_law(remaining: list[int], sampling: EpisodeSampling) -> dict[int, Fraction]:
    """P(S = s), S = min(cap, sum_i (floor(beta c_i) + 1)), beta ~ U[0, 1): S is constant between breakpoints k/c_i."""
    contributions = [min(sampling.max_support_size_contrib_per_class, r) for r in remaining]
    points = sorted({Fraction(k, c) for c in contributions for k in range(c + 1)} | {Fraction(1)})
    law: dict[int, Fraction] = {}
    for low, high in zip(points, points[1:]):
        size = min(sampling.max_support_set_size, sum(math.floor(low * c) + 1 for c in contributions))
        law[size] = law.get(size, Fraction(0)) + high - low
    assert sum(law.values()) == 1
    return law


@pytest.mark.parametrize("remaining", [[3, 50, 200, 7, 120], [100] * 8, [400] * 6])
def test_support_size_follows_its_exact_law(remaining):
    law = exact_support_size_law(remaining, PAPER)
    n = 4000
    g = torch.Generator().manual_seed(len(remaining))
    sizes = np.array([sample_support_size(remaining, PAPER, g) for _ in range(n)])
    assert sizes.min() >= len(remaining) and sizes.max() <= 500
    support = np.array(sorted(law))
    p = np.array([float(law[s]) for s in support])
    mean, var = (support * p).sum(), ((support - (support * p).sum()) ** 2 * p).sum()
    assert abs(sizes.mean() - mean) < 4.5 * math.sqrt(var / n)
    cdf = np.cumsum(p)
    empirical = np.searchsorted(np.sort(sizes), support, side="right") / n
    assert np.abs(empirical - cdf).max() < KS_P001 / math.sqrt(n)
    if 500 in law:  # the cap binds: the mass at 500 is the probability that the uncapped sum reaches it
        frequency, expected = (sizes == 500).mean(), float(law[500])
        assert abs(frequency - expected) < 4.5 * math.sqrt(expected * (1 - expected) / n)


def test_support_size_small_law_exactly():
    # few atoms: the whole law by chi-square, including its smallest value, the number of ways (probability 1/6)
    law = exact_support_size_law([1, 2, 3, 4, 6], PAPER)
    assert min(law) == 5 and law[5] == Fraction(1, 6)
    g = torch.Generator().manual_seed(11)
    sizes = [sample_support_size([1, 2, 3, 4, 6], PAPER, g) for _ in range(2000)]
    statistic, df = chi_square(sizes, law)
    assert statistic < CHI2_P001[df]
    assert {sample_support_size([1] * 7, PAPER, g) for _ in range(50)} == {7}


def test_episode_support_size_between_ways_and_the_cap():
    images = [1000] * 40 + [12] * 20  # large classes: the cap of 500 binds in many episodes
    found = episodes(images, 1000)
    assert all(d.ways <= d.support_size <= 500 for d in found)
    assert max(d.support_size for d in found) > 450


# ------------------------------------------------------------------------------------------------ per-class support
def numpy_descriptions(images: list[int], sampling: EpisodeSampling, m: int, seed: int) -> np.ndarray:
    """Support counts ``[m, classes]`` of ``m`` episodes that use *all* ``images`` classes, in numpy (own draws)."""
    rng = np.random.default_rng(seed)
    n_c = np.array(images)
    ways = len(images)
    query = min(sampling.max_num_query, n_c.min() // 2)
    remaining = n_c - query
    contributions = np.minimum(sampling.max_support_size_contrib_per_class, remaining)
    beta = rng.random(m)
    size = np.minimum(sampling.max_support_set_size, np.floor(beta[:, None] * contributions + 1).sum(axis=1))
    tilt = np.exp(rng.uniform(sampling.min_log_weight, sampling.max_log_weight, size=(m, ways)))
    shares = n_c * tilt / (n_c * tilt).sum(axis=1, keepdims=True)
    desired = np.floor(shares * (size - ways)[:, None]).astype(np.int64) + 1
    return np.minimum(desired, remaining)


@pytest.mark.parametrize("images", [[6, 15, 40, 120, 400], [20, 20, 20, 20, 80]])
def test_support_counts_match_an_independent_numpy_simulation(images):
    # five classes and min_ways = 5: every episode uses all of them (in a random order), so E[count of class c]
    # compares directly with the numpy simulation of the same formulas
    n, m = 3000, 200_000
    counts = np.zeros((n, len(images)), dtype=np.int64)
    for i, d in enumerate(episodes(images, n, seed=3)):
        assert sorted(d.classes) == list(range(len(images)))
        counts[i, list(d.classes)] = d.support_counts
    reference = numpy_descriptions(images, PAPER, m, seed=4)
    error = np.sqrt(counts.var(axis=0) / n + reference.var(axis=0) / m)
    assert np.all(np.abs(counts.mean(axis=0) - reference.mean(axis=0)) < 4.5 * error + 1e-12)
    remaining = np.array(images) - min(10, min(images) // 2)
    assert counts.min() >= 1 and np.all(counts <= remaining)
    if images[0] == 20:  # small classes have only 10 left: the cap binds in some episodes
        assert (counts[:, 0] == 10).any()


def test_support_counts_direct_call_matches_numpy():
    images, remaining, size = [30, 60, 90, 300, 30], [20, 50, 80, 290, 20], 200
    g = torch.Generator().manual_seed(5)
    counts = np.array([sample_support_counts(images, remaining, size, PAPER, g) for _ in range(3000)])
    rng = np.random.default_rng(6)
    tilt = np.exp(rng.uniform(math.log(0.5), math.log(2.0), size=(100_000, 5)))
    shares = np.array(images) * tilt / (np.array(images) * tilt).sum(axis=1, keepdims=True)
    reference = np.minimum(np.floor(shares * (size - 5)).astype(np.int64) + 1, remaining)
    error = np.sqrt(counts.var(axis=0) / 3000 + reference.var(axis=0) / 100_000)
    assert np.all(np.abs(counts.mean(axis=0) - reference.mean(axis=0)) < 4.5 * error)
    assert np.all(counts.sum(axis=1) <= size) and counts.min() >= 1


def test_every_episode_is_valid():
    images = [2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 610] * 8
    for d in episodes(images, 1500, seed=9):
        assert 5 <= d.ways <= 50 and len(set(d.classes)) == d.ways
        assert d.query_count == min(10, min(images[c] for c in d.classes) // 2)
        assert all(1 <= k <= images[c] - d.query_count for c, k in zip(d.classes, d.support_counts))
        assert d.ways <= d.support_size <= 500
        assert d.query_size == d.ways * d.query_count


# ----------------------------------------------------------------------------------------------------------- hierarchy
def test_groups_one_group_per_episode_small_groups_never_and_groups_uniform():
    sizes = [3, 5, 12, 60, 4, 20]
    starts = np.cumsum([0, *sizes])
    groups = [list(range(starts[i], starts[i + 1])) for i in range(len(sizes))]
    group_of = {c: i for i, group in enumerate(groups) for c in group}
    found = episodes([20] * int(starts[-1]), 4000, seed=1, groups=groups)
    chosen = []
    for d in found:
        owners = {group_of[c] for c in d.classes}
        assert len(owners) == 1
        (owner,) = owners
        assert 5 <= d.ways <= min(50, sizes[owner])
        chosen.append(owner)
    statistic, df = chi_square_uniform(chosen, [1, 2, 3, 5])  # groups 0 and 4 have < 5 classes: never chosen
    assert statistic < CHI2_P001[df]
    ways_in_12 = [d.ways for d, owner in zip(found, chosen) if owner == 2]
    statistic, df = chi_square_uniform(ways_in_12, list(range(5, 13)))
    assert statistic < CHI2_P001[df]
    assert max(d.ways for d, owner in zip(found, chosen) if owner == 3) == 50
    used = {c for d in found for c in d.classes}
    assert used == {c for i in (1, 2, 3, 5) for c in groups[i]}


def test_omniglot_groups_by_rotated_alphabet_on_the_vinyals_split():
    for split, expected_groups, expected_alphabets in [("train", 132, 33), ("test", 52, 13)]:
        names = vinyals_split(split)
        groups = omniglot_groups(names)
        assert len(groups) == expected_groups
        assert sorted(c for group in groups for c in group) == list(range(len(names)))
        for group in groups:
            assert len({(names[c].split("/")[0], names[c].split("/")[2]) for c in group}) == 1
        assert len(omniglot_groups(names, rotations_together=True)) == expected_alphabets
    test_names = vinyals_split("test")
    groups = omniglot_groups(test_names)
    small = [i for i, group in enumerate(groups) if len(group) < 5]
    assert len(small) == 4  # one alphabet of the test split has 4 characters: its 4 rotated groups are never drawn
    never = {c for i in small for c in groups[i]}
    used = {c for d in episodes([20] * len(test_names), 300, groups=groups, split="test") for c in d.classes}
    assert not used & never
    assert omniglot_groups(["Latin/character01", "Latin/character02/rot000"]) == [[0, 1]]


@pytest.mark.parametrize("name", ["Latin", "Latin/character01/90", "/character01/rot000", 7, "a/b/rot000/x"])
def test_omniglot_groups_rejects_other_names(name):
    with pytest.raises(ValueError, match="not an Omniglot class name"):
        omniglot_groups(["Latin/character01/rot000", name])


# -------------------------------------------------------------------------------------------------------- determinism
def test_same_key_same_description_other_seed_another():
    images = [20] * 30 + [60] * 30
    groups = [list(range(0, 25)), list(range(25, 60))]
    for grouping in (None, groups):
        first = episodes(images, 20, seed=0, groups=grouping)
        assert first == episodes(images, 20, seed=0, groups=grouping)
        other = episodes(images, 20, seed=1, groups=grouping)
        assert sum(a != b for a, b in zip(first, other)) >= 18
        assert len(set(first)) == 20  # the episodes of one seed differ from each other too
    generator = torch.Generator().manual_seed(3)
    assert sample_episode(images, PAPER, generator) != sample_episode(images, PAPER, generator)


# --------------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_episode([20] * 4, PAPER, torch.Generator()), "min_ways=5 classes, but only 4"),
        (lambda: sample_ways(3, PAPER, torch.Generator()), "min_ways=5 classes, but only 3"),
        (lambda: sample_episode([20, 20, 1, 20, 20, 20], PAPER, torch.Generator()), "class 2 has 1 example"),
        (lambda: compute_query_count([20, 1, 20], PAPER), "class 1 has 1 example"),
        (lambda: compute_query_count([], PAPER), "images_per_class is empty"),
        (lambda: compute_query_count([20, 2.5], PAPER), "must be a 1-D sequence of integers"),
        (lambda: compute_query_count([20, -3], PAPER), r"images_per_class\[1\] is -3"),
        (lambda: sample_support_size([5] * 6, EpisodeSampling(5, 5, 10, 5), torch.Generator()),
         "max_support_set_size=5 is smaller than the 6 ways"),
        (lambda: sample_support_counts([20] * 6, [10] * 6, 5, PAPER, torch.Generator()),
         "support_size=5 is smaller than the 6 ways"),
        (lambda: sample_support_counts([20] * 6, [10] * 6 + [3], 50, PAPER, torch.Generator()),
         "must describe the same classes"),
        (lambda: sample_support_counts([20, 5], [10, 8], 50, EpisodeSampling(2, 2), torch.Generator()),
         "class 1 has remaining_per_class=8 > images_per_class=5"),
        (lambda: sample_support_size([5, 0, 5], PAPER, torch.Generator()), "class 1 has no examples left"),
        (lambda: sample_episode([20] * 10, PAPER, torch.Generator(), groups=[[0, 1, 2], [3, 4]]),
         "no group has >= min_ways=5 classes"),
        (lambda: sample_episode([20] * 10, PAPER, torch.Generator(), groups=[[0, 1, 2, 3, 11]]),
         r"groups\[0\] must hold class positions in 0..9"),
        (lambda: sample_episode([20] * 10, PAPER, torch.Generator(), groups=[[0, 1, 2, 3, 3]]),
         r"groups\[0\] names a class more than once"),
        (lambda: check_groups([[0, 1], [2, 0.5]], 3), r"groups\[1\] must hold class positions"),
        (lambda: EpisodeDescription((1, 2), (1,), 3), "one support count per class"),
        (lambda: EpisodeDescription((1, 1), (1, 2), 3), "must be distinct"),
        (lambda: EpisodeDescription((1, 2), (0, 2), 3), ">= 1 support example"),
        (lambda: EpisodeDescription((1, 2), (1, 2), 0), "query_count must be an integer >= 1"),
    ],
)
def test_bad_inputs_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"min_ways": 1}, "min_ways must be an integer >= 2, got 1"),
        ({"min_ways": 5.0}, "min_ways must be an integer >= 2, got 5.0"),
        ({"max_ways_upper_bound": 4}, r"max_ways_upper_bound must be an integer >= 5 \(min_ways\), got 4"),
        ({"max_num_query": 0}, "max_num_query must be an integer >= 1, got 0"),
        ({"max_support_set_size": 49}, "max_support_set_size must be an integer >= 50"),
        ({"max_support_size_contrib_per_class": 0}, "max_support_size_contrib_per_class must be an integer >= 1"),
        ({"min_log_weight": float("nan")}, "min_log_weight must be a finite number"),
        ({"max_log_weight": "2"}, "max_log_weight must be a finite number"),
        ({"min_log_weight": 1.0, "max_log_weight": 0.0}, "min_log_weight must be <= max_log_weight"),
    ],
)
def test_bad_constants_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampling(**arguments)


def test_defaults_are_the_papers():
    assert EpisodeSampling(5, 50, 10, 500, 100, math.log(0.5), math.log(2)) == PAPER
    assert PAPER.max_query_size == 500
    equal_weights = EpisodeSampling(min_log_weight=0.0, max_log_weight=0.0)  # no tilt: shares follow the data
    g = torch.Generator().manual_seed(0)
    assert sample_support_counts([10, 30, 60, 100, 200], [5, 25, 55, 95, 195], 205, equal_weights, g) == (
        5, 16, 31, 51, 101)
