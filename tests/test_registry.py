from importlib.metadata import EntryPoint

import pytest

from sciinterp import registry
from sciinterp.registry import GROUP, describe_adapters, get_adapter, load_adapter_class
from sciinterp.testing import FakeAdapter


@pytest.fixture
def plugins(monkeypatch):
    eps = [
        EntryPoint("fake", "sciinterp.testing:FakeAdapter", GROUP),
        EntryPoint("gone", "no_such_module_xyz:Adapter", GROUP),
        EntryPoint("needs_esm", "esm.not_there:Adapter", GROUP),
        EntryPoint("typo", "sciinterp.testing:NoSuchClass", GROUP),
        EntryPoint("fake", "other.module:FakeAdapter", GROUP),  # a second package claims the name
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in eps if e.group == group])
    registry.available_adapters.cache_clear()
    yield
    registry.available_adapters.cache_clear()


def test_broken_plugins_warn_and_do_not_hide_the_others(plugins):
    with pytest.warns(UserWarning, match="'fake' is registered twice"):
        table = registry.available_adapters()
    assert table["fake"].value == "sciinterp.testing:FakeAdapter"
    with pytest.warns(UserWarning) as caught:
        rows = describe_adapters()
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 3 and msgs[0].startswith("adapter plugin 'gone' (no_such_module_xyz:Adapter) failed to load")
    status = {r.name: (r.status, r.error) for r in rows}
    assert status["fake"] == ("ok", "")
    assert status["gone"][0] == "broken" and "No module named 'no_such_module_xyz'" in status["gone"][1]
    assert status["needs_esm"][1].endswith("install its extra: pip install 'sciinterp[esm]'")
    assert "AttributeError" in status["typo"][1] and "does not define it" in status["typo"][1]


@pytest.mark.filterwarnings("ignore:adapter name 'fake' is registered twice")
def test_get_adapter_by_name_or_class_and_clear_errors(plugins):
    assert isinstance(get_adapter("fake", seed=3), FakeAdapter) and get_adapter(FakeAdapter).seed == 0
    with pytest.raises(KeyError, match="no adapter named 'nope' .* installed: fake, gone, needs_esm, typo"):
        load_adapter_class("nope")
    with pytest.raises(ImportError, match=r"adapter 'gone' \(no_such_module_xyz:Adapter\) could not be loaded"):
        get_adapter("gone")


def test_builtins_are_registered_through_the_entry_point_group():
    registry.available_adapters.cache_clear()
    names = set(registry.available_adapters())
    assert {"module", "fake", "esm2", "sfno", "aurora"} <= names
    assert load_adapter_class("fake") is FakeAdapter
