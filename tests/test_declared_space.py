"""The search space comes from the passes' declared search values (issue 15, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from pfcompile.errors import ConfigError
from pfcompile.model import load_onnx
from pfcompile.passes.declared import check_keys, search_fields
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.quantize import QuantConfig
from pfcompile.passes.sparsify import SparsifyConfig
from pfcompile.paths import demo_paths
from pfcompile.search import knobs
from pfcompile.search.knobs import (
    bit_choices,
    declared_search_values,
    default_min_keep,
    parse_bits,
    parse_sparsity,
)
from pfcompile.search.space import build_space
from pfcompile.targets import load_target

#: the choices before they were derived from the declarations (hard-coded then)
OLD_MIN_KEEP = 0.25
OLD_CPU_BITS, OLD_CPU_SIZE_BITS = (32, 8), (32, 8, 4)


@pytest.fixture(scope="module")
def demo_model():
    return load_onnx(demo_paths()[0])


def test_declared_values_are_the_configs_metadata():
    got = declared_search_values()
    assert got == {"keep": PruneConfig.search_space()["ratio"],
                   "bits": QuantConfig.search_space()["bits"]["search"],
                   "sparsity": SparsifyConfig.search_space()["sparsity"]["search"]}
    assert got["keep"] == (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    assert got["bits"] == (2, 3, 4, 5, 6, 7, 8)
    assert default_min_keep() == OLD_MIN_KEEP
    assert search_fields(SparsifyConfig)["sparsity"]["per_layer"] is True
    assert set(search_fields(QuantConfig)) == {"bits", "act_bits", "calib", "codebook"}
    with pytest.raises(ConfigError, match=r"cfg: unknown key\(s\) \['z'\]; allowed: \['a'\]"):
        check_keys({"a": 1, "z": 2}, {"a"}, "cfg")


def test_space_is_the_same_as_with_the_old_hard_coded_choices(demo_model):
    host = load_target("host")
    hw = host.hardware
    new = build_space(demo_model, hw, bits=parse_bits("auto", host, size_goal=True),
                      sparsity=parse_sparsity("auto"))
    old = build_space(demo_model, hw, min_keep=OLD_MIN_KEEP, bits=OLD_CPU_SIZE_BITS,
                      sparsity=(0.0, 0.25, 0.5, 0.625, 0.75, 0.875))
    assert new.to_json() == old.to_json()
    assert len(new) == 7 + 12 + 12
    assert build_space(demo_model, hw).to_json() == build_space(
        demo_model, hw, min_keep=OLD_MIN_KEEP).to_json()
    assert parse_bits("auto", host) == OLD_CPU_BITS
    # same seed, same choices -> the same configs
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [new.sample(a) for _ in range(5)] == [old.sample(b) for _ in range(5)]


def test_space_follows_the_declarations(demo_model, monkeypatch):
    host, bf = load_target("host"), load_target("fpga-bitfusion")
    before = build_space(demo_model, host.hardware)
    declared = declared_search_values()
    monkeypatch.setattr(knobs, "declared_search_values",
                        lambda: {**declared, "keep": (0.0, 0.5), "bits": (2, 8),
                                 "sparsity": (0.0, 0.5)})
    assert default_min_keep() == 0.5
    after = build_space(demo_model, host.hardware)
    narrower = {k.name: k.choices for k in after.knobs}
    assert narrower and all(min(narrower[k.name]) >= 0.5 * k.full for k in after.knobs)
    assert any(min(k.choices) < 0.5 * k.full for k in before.knobs)
    assert knobs.sparsity_choices() == (0.0, 0.5)
    assert bit_choices(host) == (32, 8)
    assert bit_choices(bf) == (32, 8, 2)           # weight_bits [2, 4, 8], 4 not declared
    with pytest.raises(ConfigError, match=r"asks for \[4\]-bit layers.*declares only \[2, 8\]"):
        bit_choices(host, size_goal=True)
    with pytest.raises(ConfigError, match=r"runs layers at \[32, 8, 2\].*not 4"):
        parse_bits("4", host)
    monkeypatch.setattr(knobs, "declared_search_values",
                        lambda: {**declared, "bits": (3, 5)})
    with pytest.raises(ConfigError, match=r"weight_bits \[2, 4, 8\] has no width the quantize "
                                          r"pass declares \(\[3, 5\]\)"):
        bit_choices(bf)
