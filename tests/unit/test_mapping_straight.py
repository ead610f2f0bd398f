"""A mapping's generated function gives what its rules give one by one, for any data."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mapping import compile_mapping

_PARTS = st.sampled_from(["a", "b", "c", "0", "1"])
_PATHS = st.lists(_PARTS, min_size=1, max_size=3).map(".".join)
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3), st.sampled_from(["1", "yes"])
)
_DATA = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_PARTS, inner, max_size=4)
    ),
    max_leaves=12,
)


def _source(leaf_only: bool) -> st.SearchStrategy[Any]:
    plain = st.one_of(
        _PATHS,
        st.builds(lambda c: {"const": c}, _LEAVES),
        st.builds(lambda p: {"from": p}, _PATHS),
        st.builds(lambda p, d: {"from": p, "default": d}, _PATHS, _LEAVES),
        st.builds(
            lambda p, a: {"from": p, "as": a},
            _PATHS,
            st.sampled_from(["string", "boolean"]),
        ),
    )
    if leaf_only:
        return plain
    each = st.builds(
        lambda p, e: {"from": p, "each": e},
        _PATHS,
        st.dictionaries(_PATHS, _source(True), min_size=1, max_size=3),
    )
    return st.one_of(plain, each)


_SPECS = st.dictionaries(_PATHS, _source(False), min_size=1, max_size=5)


@settings(max_examples=400, deadline=None)
@given(spec=_SPECS, data=_DATA)
def test_the_generated_function_gives_what_the_rules_give(spec: dict[str, Any], data: Any) -> None:
    mapping = compile_mapping(spec)
    assert mapping.apply(data) == mapping.apply_rule_by_rule(data)
    # and the same keys in the same order, at every level
    assert repr(mapping.apply(data)) == repr(mapping.apply_rule_by_rule(data))


def test_it_can_fail_the_rules_are_followed_one_by_one() -> None:
    """The reference itself: a missing path leaves the target out, null takes the default, a
    dict subclass is followed like a dict, items are mapped one by one."""

    class Sub(dict[str, Any]):
        pass

    mapping = compile_mapping(
        {
            "x.y": "a.b",
            "z": {"from": "a.c", "default": 7},
            "n": {"from": "a.0", "default": 1},
            "rows": {"from": "r", "each": {"k": "v"}},
            "s": {"from": "q", "as": "string"},
        }
    )
    data = Sub(a=Sub(b=1, c=None), r=[{"v": 2}, 3], q=4)
    expected = {"x": {"y": 1}, "z": 7, "n": 1, "rows": [{"k": 2}, {}], "s": "4"}
    assert mapping.apply(data) == expected
    assert mapping.apply_rule_by_rule(data) == expected
    assert compile_mapping({"t": "missing"}).apply({}) == {}


def test_secrets_stay_out_of_the_repr(monkeypatch: Any) -> None:
    monkeypatch.setenv("TB_MAPPING_SECRET", "s3cr3t")
    mapping = compile_mapping({"auth.key": {"env": "TB_MAPPING_SECRET"}})
    assert mapping.apply({}) == {"auth": {"key": "s3cr3t"}}
    assert "s3cr3t" not in repr(mapping)
