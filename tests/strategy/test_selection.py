import pytest

from consortia.core.errors import ConfigError
from consortia.strategy.presets import PRESETS, make_strategy
from consortia.strategy.selection import UniformSelection
from consortia.strategy.server_opt import Adam, Momentum

SITES = [f"s{i:02d}" for i in range(20)]


def test_fraction_count_and_minimum():
    assert UniformSelection(fraction=0.1).how_many(20) == 2
    assert UniformSelection(fraction=0.01, min_sites=3).how_many(20) == 3
    assert UniformSelection(count=5, fraction=0.9).how_many(20) == 5
    assert UniformSelection(count=50).how_many(20) == 20


def test_selection_is_seeded_per_round_and_without_replacement():
    sel = UniformSelection(count=5)
    a = sel.select(SITES, 1, seed=0)
    assert a == sel.select(list(reversed(SITES)), 1, seed=0)
    assert len(set(a)) == 5 and set(a) <= set(SITES)
    assert a != sel.select(SITES, 2, seed=0) or a != sel.select(SITES, 3, seed=0)
    assert a != sel.select(SITES, 1, seed=1) or a != sel.select(SITES, 1, seed=2)


def test_selection_covers_sites_uniformly():
    sel = UniformSelection(count=2)
    counts = dict.fromkeys(SITES, 0)
    for r in range(2000):
        for s in sel.select(SITES, r, seed=0):
            counts[s] += 1
    # expected 200 each; binomial sd ~ 13
    assert all(140 < c < 260 for c in counts.values())


def test_too_few_sites_and_bad_settings():
    with pytest.raises(ConfigError, match="at least 3 sites"):
        UniformSelection(count=2, min_sites=3).select(["a", "b"], 1, 0)
    with pytest.raises(ConfigError, match="fraction"):
        UniformSelection(fraction=1.5)
    with pytest.raises(ConfigError, match="fraction or a count"):
        UniformSelection()


def test_presets_are_combinations():
    sel = UniformSelection(count=2)
    assert set(PRESETS) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}
    assert make_strategy("fedprox", selection=sel).train.proximal_mu == 0.01
    assert isinstance(make_strategy("fedadam", selection=sel).server_optimizer, Adam)
    assert isinstance(make_strategy("fedavgm", selection=sel).server_optimizer, Momentum)
    s = make_strategy("fedavg", selection=sel, server_optimizer="adam", server_options={"lr": 0.5})
    assert s.server_optimizer.lr == 0.5
    with pytest.raises(ConfigError, match="unknown strategy preset"):
        make_strategy("fedsomething", selection=sel)
