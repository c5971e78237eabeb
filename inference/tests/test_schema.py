"""The request parser: every accepted shape, and each bad input named precisely."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference.schema import FEATURES, SEED_EXAMPLE, RequestError, parse_payload

ROW = [float(SEED_EXAMPLE[f]) for f in FEATURES]


def with_(**changes: Any) -> dict[str, Any]:
    return {**SEED_EXAMPLE, **changes}


def without(*names: str) -> dict[str, Any]:
    return {k: v for k, v in SEED_EXAMPLE.items() if k not in names}


@pytest.mark.parametrize(
    "payload, n_rows",
    [
        (SEED_EXAMPLE, 1),
        (dict(reversed(list(SEED_EXAMPLE.items()))), 1),
        ({"instances": [SEED_EXAMPLE, SEED_EXAMPLE]}, 2),
        ({"instances": [list(ROW)]}, 1),
        ({"dataframe_records": [SEED_EXAMPLE] * 3}, 3),
        ({"dataframe_split": {"columns": list(FEATURES), "data": [ROW, ROW]}}, 2),
        ({"dataframe_split": {"columns": list(FEATURES)[::-1], "data": [ROW[::-1]]}}, 1),
        ({"dataframe_split": {"index": [0], "columns": list(FEATURES), "data": [ROW]}}, 1),
    ],
)
def test_accepted_shapes_give_the_rows_in_feature_order(payload: Any, n_rows: int) -> None:
    x = parse_payload(payload)
    assert x.shape == (n_rows, len(FEATURES))
    assert x.dtype == np.float64
    assert np.array_equal(x, np.tile(ROW, (n_rows, 1)))


# (payload, expected [(field, row, problem substring)])
BAD = [
    (without("grade"), [("grade", None, "missing")]),
    (without("lat", "long"), [("lat", None, "missing"), ("long", None, "missing")]),
    (with_(pool=1), [("pool", None, "unknown")]),
    (with_(bedrooms="3"), [("bedrooms", None, "string")]),
    (with_(bedrooms=None), [("bedrooms", None, "null")]),
    (with_(waterfront=True), [("waterfront", None, "boolean")]),
    (with_(view=[0]), [("view", None, "array")]),
    (with_(sqft_lot=float("nan")), [("sqft_lot", None, "finite")]),
    (with_(sqft_lot=float("inf")), [("sqft_lot", None, "finite")]),
    (with_(sqft_lot=10**400), [("sqft_lot", None, "too large")]),
    (
        with_(grade="x", extra=1, **{"yr_built": False}),
        [("grade", None, "string"), ("extra", None, "unknown"), ("yr_built", None, "boolean")],
    ),
    ({"instances": [SEED_EXAMPLE, without("zipcode")]}, [("zipcode", 1, "missing")]),
    ({"instances": [SEED_EXAMPLE, SEED_EXAMPLE, with_(floors="two")]}, [("floors", 2, "string")]),
    ({"instances": [ROW, ROW[:-1]]}, [("(row)", 1, "18 values")]),
    ({"instances": [ROW, [*ROW[:4], True, *ROW[5:]]]}, [("floors", 1, "boolean")]),
    ({"instances": [ROW, 5]}, [("(row)", 1, "array")]),
    ({"dataframe_records": [SEED_EXAMPLE, "x"]}, [("(row)", 1, "object")]),
    (
        {"dataframe_split": {"columns": list(FEATURES)[1:], "data": [ROW[1:]]}},
        [("bedrooms", None, "missing")],
    ),
    ({"dataframe_split": {"columns": [*FEATURES, "pool"], "data": [[*ROW, 1]]}}, [("pool", None, "unknown")]),
    (
        {"dataframe_split": {"columns": list(FEATURES), "data": [ROW, [*ROW[:-1], "x"]]}},
        [("sqft_lot15", 1, "string")],
    ),
]


@pytest.mark.parametrize("payload, expected", BAD)
def test_bad_input_names_each_field_and_row(
    payload: Any, expected: list[tuple[str, int | None, str]]
) -> None:
    with pytest.raises(RequestError) as info:
        parse_payload(payload)
    err = info.value
    assert err.status == 400
    got = {(f.field, f.row): f.problem for f in err.fields}
    assert set(got) == {(name, row) for name, row, _ in expected}
    for name, row, problem in expected:
        assert problem in got[(name, row)]
        assert name in err.message


@pytest.mark.parametrize(
    "payload",
    [
        [SEED_EXAMPLE],
        "x",
        3,
        None,
        {"instances": []},
        {"instances": {"a": 1}},
        {"instances": [SEED_EXAMPLE], "dataframe_records": []},
        {"instances": [SEED_EXAMPLE], "extra": 1},
        {"dataframe_split": [ROW]},
        {"dataframe_split": {"columns": "bedrooms", "data": [ROW]}},
    ],
)
def test_malformed_bodies_are_400(payload: Any) -> None:
    with pytest.raises(RequestError) as info:
        parse_payload(payload)
    assert info.value.status == 400


def test_too_many_rows_is_413_and_limit_itself_is_accepted() -> None:
    assert parse_payload({"instances": [ROW] * 50}, max_rows=50).shape == (50, 18)
    with pytest.raises(RequestError) as info:
        parse_payload({"instances": [ROW] * 51}, max_rows=50)
    assert info.value.status == 413


def test_error_list_is_capped_for_huge_bad_batches() -> None:
    with pytest.raises(RequestError) as info:
        parse_payload({"instances": [{}] * 500})
    body = info.value.as_dict()["error"]
    assert len(body["fields"]) == 100
    assert body["fields_truncated"] == 500 * 18 - 100
