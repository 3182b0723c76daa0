"""One place for method names: the registry finds the modules, labels/colours/method lists derive from it."""

from __future__ import annotations

from test_merge_methods import ROWS

from recall import catalog, profiles
from recall.merge.registry import METHODS, load_all


def test_registry_finds_every_method_module():
    import importlib
    import inspect
    import pkgutil

    from recall import merge
    from recall.merge.base import MergeMethod

    load_all()
    registered = set(METHODS.values())
    for info in pkgutil.iter_modules(merge.__path__):  # every method class of the package is registered
        module = importlib.import_module(f"recall.merge.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, MergeMethod) and cls.__module__ == module.__name__ and not inspect.isabstract(cls):
                assert cls in registered, f"{cls.__name__} in {info.name} is not registered"
    assert {"average", "dare", "layer_linear", "lm_cocktail", "magmax", "recall", "task_arithmetic",
            "ties"} <= set(METHODS)


def test_method_lists_and_labels_derive_from_the_registry():
    baselines = catalog.merge_baselines()
    assert "recall" not in baselines and "layer_linear" not in baselines
    assert catalog.merge_methods() == ("recall", *baselines)
    assert profiles.ALL_MERGES == catalog.merge_methods()
    for name in catalog.merge_methods():
        assert catalog.label(name) == METHODS[name].label and METHODS[name].label
    assert catalog.label("lm_cocktail") == "LM-Cocktail" and catalog.label("sft") == "LoRA SFT"
    assert catalog.label("expert-ng") == "Expert 20NG" and catalog.label("unknown") == "unknown"


def test_every_baseline_has_a_table_driven_test_row():
    """Adding a merge method is one module plus one row of tests/test_merge_methods.py:ROWS."""
    assert set(catalog.merge_baselines()) <= {name for name, _ in ROWS}


def test_colours_are_stable_and_recall_is_red():
    a = catalog.colors(["recall", "ties", "sft", "base"])
    b = catalog.colors(["ties", "brand_new_method", "recall"])
    assert a["recall"] == b["recall"] == catalog.RECALL_RED and a["ties"] == b["ties"]
    assert "brand_new_method" in b


def test_scenario_options_live_in_the_profile():
    p = profiles.get_profile("cpu")
    assert p.options_for("single", "average") == {"include_base": True}
    assert p.options_for("multi", "average") == {}
    assert p.options_for("sequential", "recall") == {"k": p.recall_k, "include_base": False}
    q = profiles.get_profile("cpu", method_options={"multi": {"ties": {"density": 0.5}}})
    assert q.options_for("multi", "ties") == {"density": 0.5}
    import pytest

    with pytest.raises(ValueError, match="scenario"):
        profiles.get_profile("cpu", method_options={"nope": {}})
