"""The JSON prefix scanner against the standard library's decoder."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.tool_parsers.json_prefix import JsonStatus, scan_call_object, scan_value

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=st.dictionaries(st.text(max_size=5), _json, max_size=4), ascii_only=st.booleans())
def test_every_prefix_of_an_object_is_incomplete(value: dict, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=None if ascii_only else 1)
    for cut in range(len(text)):
        assert scan_value(text[:cut], 0) == (JsonStatus.INCOMPLETE, cut), text[:cut]
    assert scan_value(text + " tail", 0) == (JsonStatus.COMPLETE, len(text))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"a": 1,}', 8),
        ('{"a" 1}', 5),
        ("{'a': 1}", 1),
        ('{"a": tru}', 6),
        ('{"a": NaN}', 6),
        ('{"a": "x\\q"}', 8),
        ('{"a": 01}', 7),
        ("[1 2]", 3),
    ],
)
def test_invalid_text_is_found_where_it_breaks(text: str, where: int) -> None:
    assert scan_value(text, 0) == (JsonStatus.INVALID, where)


def test_numbers_at_the_end_may_grow_unless_final() -> None:
    assert scan_value("12", 0) == (JsonStatus.INCOMPLETE, 2)
    assert scan_value("12", 0, final=True) == (JsonStatus.COMPLETE, 2)
    assert scan_value("1.", 0, final=True) == (JsonStatus.COMPLETE, 1)  # "." is not its own


def test_call_object_reports_name_and_arguments_span() -> None:
    text = '{"arguments": {"a": [1]}, "name": "f", "extra": 0}'
    obj = scan_call_object(text, 0, "name", ("arguments",))
    assert obj.status is JsonStatus.COMPLETE and obj.name == "f"
    assert obj.arguments_start is not None and obj.arguments_end is not None
    assert text[obj.arguments_start : obj.arguments_end] == '{"a": [1]}'
    partial = scan_call_object('{"name": "f", "arguments": {"a": "b', 0, "name", ("arguments",))
    assert partial.status is JsonStatus.INCOMPLETE and partial.arguments_end is None
