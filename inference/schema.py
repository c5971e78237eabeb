"""The feature schema and the request parser/validator for ``POST /predict``.

Validation is hand-written rather than pydantic: a 10,000-row batch must parse in a
few milliseconds, and each error must name the field and row a user got wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURES: tuple[str, ...] = (
    "bedrooms",
    "bathrooms",
    "sqft_living",
    "sqft_lot",
    "floors",
    "waterfront",
    "view",
    "condition",
    "grade",
    "sqft_above",
    "sqft_basement",
    "yr_built",
    "yr_renovated",
    "zipcode",
    "lat",
    "long",
    "sqft_living15",
    "sqft_lot15",
)

# bool is a subclass of int, so membership is tested on the exact type.
_NUMBER_TYPES = frozenset({int, float})
# Error lists are capped so a hostile 10,000-row batch cannot produce a huge response.
MAX_REPORTED_ERRORS = 100


@dataclass
class FieldError:
    """One problem with one field of one row (row is None for single-object requests)."""

    field: str
    problem: str
    row: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "problem": self.problem}
        if self.row is not None:
            out["row"] = self.row
        return out


@dataclass
class RequestError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    status: int
    code: str
    message: str
    fields: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            err["fields"] = [f.as_dict() for f in self.fields[:MAX_REPORTED_ERRORS]]
            if len(self.fields) > MAX_REPORTED_ERRORS:
                err["fields_truncated"] = len(self.fields) - MAX_REPORTED_ERRORS
        return {"error": err}


def _bad_request(message: str, fields: list[FieldError] | None = None) -> RequestError:
    return RequestError(400, "invalid_input", message, fields or [])


def _value_problem(value: Any) -> str | None:
    """Why ``value`` is not an acceptable feature value, or None if it is."""
    t = type(value)
    if t is bool:
        return "must be a number, got a boolean"
    if t not in _NUMBER_TYPES:
        return f"must be a number, got {_json_type(value)}"
    try:
        f = float(value)
    except OverflowError:
        return "number is too large"
    if not math.isfinite(f):
        return "must be a finite number"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object_row_errors(row: Any, index: int | None, features: tuple[str, ...]) -> list[FieldError]:
    if not isinstance(row, dict):
        return [FieldError("(row)", f"must be an object, got {_json_type(row)}", index)]
    errors = [FieldError(name, "missing", index) for name in features if name not in row]
    known = set(features)
    errors += [FieldError(str(k), "unknown field", index) for k in row if k not in known]
    for name in features:
        if name in row:
            problem = _value_problem(row[name])
            if problem:
                errors.append(FieldError(name, problem, index))
    return errors


def _list_row_errors(row: Any, index: int | None, features: tuple[str, ...]) -> list[FieldError]:
    if not isinstance(row, list):
        return [FieldError("(row)", f"must be an array, got {_json_type(row)}", index)]
    if len(row) != len(features):
        return [
            FieldError("(row)", f"must have {len(features)} values in feature order, got {len(row)}", index)
        ]
    errors = []
    for name, value in zip(features, row, strict=True):
        problem = _value_problem(value)
        if problem:
            errors.append(FieldError(name, problem, index))
    return errors


def _to_matrix(flat: list[Any], n_rows: int, n_features: int) -> np.ndarray | None:
    """Fast conversion for the common all-valid case; None means "look closer"."""
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return None
    try:
        x = np.array(flat, dtype=np.float64)
    except OverflowError:
        return None
    if not np.isfinite(x).all():
        return None
    return x.reshape(n_rows, n_features)


def rows_from_objects(rows: list[Any], features: tuple[str, ...], batch: bool) -> np.ndarray:
    """Rows given as objects keyed by feature name (key order free)."""
    n = len(features)
    try:
        if all(type(r) is dict and len(r) == n for r in rows):
            x = _to_matrix([r[k] for r in rows for k in features], len(rows), n)
            if x is not None:
                return x
    except KeyError:
        pass
    errors: list[FieldError] = []
    for i, row in enumerate(rows):
        errors += _object_row_errors(row, i if batch else None, features)
    raise _bad_request(_summary(errors), errors)


def rows_from_lists(rows: list[Any], features: tuple[str, ...]) -> np.ndarray:
    """Rows given as arrays in feature order."""
    n = len(features)
    if all(type(r) is list and len(r) == n for r in rows):
        x = _to_matrix([v for r in rows for v in r], len(rows), n)
        if x is not None:
            return x
    errors: list[FieldError] = []
    for i, row in enumerate(rows):
        errors += _list_row_errors(row, i, features)
    raise _bad_request(_summary(errors), errors)


def _summary(errors: list[FieldError]) -> str:
    names = sorted({e.field for e in errors})
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"{len(errors)} invalid field(s): {shown}"


def _check_rows(rows: Any, where: str, max_rows: int) -> list[Any]:
    if not isinstance(rows, list):
        raise _bad_request(f"'{where}' must be an array", [FieldError(where, "must be an array")])
    if not rows:
        raise _bad_request(f"'{where}' has no rows", [FieldError(where, "must not be empty")])
    if len(rows) > max_rows:
        raise RequestError(413, "too_many_rows", f"{len(rows)} rows exceed the limit of {max_rows}")
    return rows


def parse_payload(payload: Any, features: tuple[str, ...] = FEATURES, max_rows: int = 10_000) -> np.ndarray:
    """Turn a decoded JSON body into an ``(n_rows, n_features)`` float64 matrix.

    Accepted shapes: the seed's flat object (one row); ``{"instances": [...]}`` with rows
    as objects or as arrays in feature order; MLflow's ``{"dataframe_split": {"columns",
    "data"}}`` and ``{"dataframe_records": [...]}``. Raises RequestError otherwise.
    """
    if not isinstance(payload, dict):
        raise _bad_request(f"body must be a JSON object, got {_json_type(payload)}")
    wrappers = [k for k in ("instances", "dataframe_split", "dataframe_records") if k in payload]
    if not wrappers:
        return rows_from_objects([payload], features, batch=False)
    if len(wrappers) > 1 or len(payload) > 1:
        extra = sorted(set(payload) - {wrappers[0]}) if len(wrappers) == 1 else wrappers
        raise _bad_request(
            "a batch body holds exactly one of 'instances', 'dataframe_split', 'dataframe_records'",
            [FieldError(str(k), "unexpected key") for k in extra],
        )
    key = wrappers[0]
    if key == "dataframe_split":
        return _from_dataframe_split(payload[key], features, max_rows)
    rows = _check_rows(payload[key], key, max_rows)
    # The first row decides the layout (TF-serving style: all rows share it).
    if key == "instances" and type(rows[0]) is list:
        return rows_from_lists(rows, features)
    return rows_from_objects(rows, features, batch=True)


def _from_dataframe_split(split: Any, features: tuple[str, ...], max_rows: int) -> np.ndarray:
    if not isinstance(split, dict):
        raise _bad_request("'dataframe_split' must be an object with 'columns' and 'data'")
    columns, data = split.get("columns"), split.get("data")
    extra = sorted(set(split) - {"columns", "data", "index"})
    if extra:
        raise _bad_request(
            "unexpected keys in 'dataframe_split'",
            [FieldError(f"dataframe_split.{k}", "unexpected key") for k in extra],
        )
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad_request(
            "'dataframe_split.columns' must be an array of feature names",
            [FieldError("dataframe_split.columns", "must be an array of strings")],
        )
    known = set(features)
    errors = [FieldError(name, "missing") for name in features if name not in columns]
    errors += [FieldError(c, "unknown field") for c in columns if c not in known]
    errors += [FieldError(c, "duplicate column") for i, c in enumerate(columns) if c in columns[:i]]
    if errors:
        raise _bad_request(_summary(errors), errors)
    rows = _check_rows(data, "dataframe_split.data", max_rows)
    x = rows_from_lists(rows, tuple(columns))
    if tuple(columns) != features:
        x = x[:, [columns.index(name) for name in features]]
    return x


# The seed project's example request: also the warm-up row and the benchmark's request.
SEED_EXAMPLE: dict[str, float] = {
    "bedrooms": 3,
    "bathrooms": 1,
    "sqft_living": 1180,
    "sqft_lot": 5650,
    "floors": 1,
    "waterfront": 0,
    "view": 0,
    "condition": 3,
    "grade": 7,
    "sqft_above": 1180,
    "sqft_basement": 0,
    "yr_built": 1955,
    "yr_renovated": 0,
    "zipcode": 98178,
    "lat": 47.5112,
    "long": -122.257,
    "sqft_living15": 1340,
    "sqft_lot15": 5650,
}
