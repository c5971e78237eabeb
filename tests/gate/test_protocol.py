"""The http gate's pure parts, table-driven: request presets (exact bodies and paths), JSON pointers,
answers in every shape (numbers, lists, numpy-style strings), and what a bad answer is told."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.gate.protocol import (
    AnswerError,
    Shape,
    numpy_string,
    predictions,
    probabilities,
    resolve,
    scalar,
)
from orchestrator.gate.spec import RequestSpec, ResponseSpec

FEATURES = ("a", "b")
ROWS = [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.0}]


def shape(**request: Any) -> Shape:
    response = request.pop("response", {})
    return Shape(RequestSpec(**request), ResponseSpec(**response))


@pytest.mark.parametrize(
    ("request_", "path", "pointer", "batch", "body"),
    [
        ({"preset": "flat"}, "/predict", "", 1, {"a": 1, "b": 2.5}),
        ({"preset": "instances"}, "/predict", "/predictions", 100, {"instances": ROWS}),
        (
            {"preset": "instances", "rows": "lists"},
            "/predict",
            "/predictions",
            100,
            {"instances": [[1, 2.5], [3, 4.0]]},
        ),
        (
            {"preset": "mlflow_split"},
            "/invocations",
            "/predictions",
            100,
            {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4.0]]}},
        ),
        (
            {"preset": "mlflow_records", "batch_size": 7},
            "/invocations",
            "/predictions",
            7,
            {"dataframe_records": ROWS},
        ),
        (
            {"preset": "kserve_v2", "model_name": "houses"},
            "/v2/models/houses/infer",
            "/outputs/0/data",
            100,
            {"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1, 2.5, 3, 4.0]}]},
        ),
        (
            {
                "preset": "kserve_v2",
                "path": "/infer",
                "input_name": "x",
                "datatype": "FP32",
                "response": {"prediction": "/y"},
            },
            "/infer",
            "/y",
            100,
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4.0]}]},
        ),
    ],
)
def test_presets_exact_request(request_: dict, path: str, pointer: str, batch: int, body: Any) -> None:
    s = shape(**request_)
    rows = ROWS[:1] if request_["preset"] == "flat" else ROWS
    assert (s.path, s.pointer, s.batch_size) == (path, pointer, batch)
    assert s.body(rows, FEATURES) == body


DOC = {"predictions": [1, 2], "a/b": {"m~n": [10, {"x": 5}]}, "": 7}


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        ("", DOC),
        ("/predictions", [1, 2]),
        ("/predictions/1", 2),
        ("/a~1b/m~0n/1/x", 5),
        ("/", 7),
    ],
)
def test_json_pointer(pointer: str, value: Any) -> None:
    assert resolve(DOC, pointer) == value


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("/prediction", "nothing at /prediction (no 'prediction' in an object with keys predictions, a/b, )"),
        ("/predictions/2", "nothing at /predictions/2 (no '2' in a list of 2)"),
        ("/predictions/01", "nothing at /predictions/01 (no '01' in a list of 2)"),
        ("/predictions/0/x", "nothing at /predictions/0/x (no 'x' in a int)"),
        ("predictions", "JSON pointer 'predictions' must be empty or start with '/'"),
    ],
)
def test_json_pointer_errors(pointer: str, message: str) -> None:
    with pytest.raises(AnswerError) as exc:
        resolve(DOC, pointer)
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("answer", "n", "expected"),
    [
        (221900.0, 1, [221900.0]),
        ([221900.0], 1, [221900.0]),
        ("[221900.]", 1, [221900.0]),
        ("[ 221900.5 ]", 1, [221900.5]),
        ("221900.0", 1, [221900.0]),
        ("[[221900.]]", 1, [221900.0]),
        ("[1.5 2. ]", 2, [1.5, 2.0]),
        ("[1.5e+05, 2.0]", 2, [150000.0, 2.0]),
        ([[1.0], [2.0]], 2, [1.0, 2.0]),
        (["[1.]", "[2.]"], 2, [1.0, 2.0]),
        ([0, 1, 1], 3, [0, 1, 1]),
        ("['setosa' 'virginica']", 2, ["setosa", "virginica"]),
        (["cat", "dog"], 2, ["cat", "dog"]),
        ("3", 1, [3]),
    ],
)
def test_predictions_in_every_shape(answer: Any, n: int, expected: list) -> None:
    assert predictions(answer, n) == expected


@pytest.mark.parametrize(
    ("answer", "n", "message"),
    [
        ([1.0, 2.0], 1, "expected 1 prediction(s), got 2"),
        ("[1. 2.]", 3, "expected 3 prediction(s), got 2"),
        ([{"price": 1}], 1, 'prediction 0: expected a number or a label, got {"price": 1}'),
        ([1, None], 2, "prediction 1: expected a number or a label, got null"),
        ([True], 1, "prediction 0: expected a number or a label, got true"),
        ("[1.2.3]", 1, "'1.2.3' in '[1.2.3]' is not a number"),
        ([[1, 2]], 1, "prediction 0: expected a number or a label, got [1, 2]"),
    ],
)
def test_unreadable_predictions_say_what_is_wrong(answer: Any, n: int, message: str) -> None:
    with pytest.raises(AnswerError) as exc:
        predictions(answer, n)
    assert str(exc.value) == message


def test_a_bad_prediction_names_its_index() -> None:
    with pytest.raises(AnswerError) as exc:
        predictions([1.0, {"y": 2}], 2, "/predictions")
    assert exc.value.index == 1 and str(exc.value).startswith("prediction 1 at /predictions: ")


@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [
        ([0.2, 0.8], 1, [[0.2, 0.8]]),
        ([[0.2, 0.8], [0.9, 0.1]], 2, [[0.2, 0.8], [0.9, 0.1]]),
        ([0.75, 0.25], 2, [[0.25, 0.75], [0.75, 0.25]]),  # binary: P(second class) per row
        ("[[0.2 0.8]]", 1, [[0.2, 0.8]]),
    ],
)
def test_probabilities(value: Any, n: int, expected: list) -> None:
    assert probabilities(value, n, "/p") == expected


@pytest.mark.parametrize(
    ("value", "n", "message"),
    [
        ({"p": 1}, 1, "expected class probabilities at /p, got an object with keys p"),
        ([[0.2, 0.8]], 2, "expected 2 probability row(s) at /p, got 1"),
        ([["a"], [0.1]], 2, 'a probability row at /p must be a list of numbers, got ["a"]'),
    ],
)
def test_probability_errors(value: Any, n: int, message: str) -> None:
    with pytest.raises(AnswerError) as exc:
        probabilities(value, n, "/p")
    assert str(exc.value) == message


def test_numpy_string_and_scalar() -> None:
    assert numpy_string("[[0.1 0.9]\n [0.8 0.2]]") == [0.1, 0.9, 0.8, 0.2]
    assert numpy_string("[nan inf]")[1] == float("inf")
    assert scalar("[7.]") == 7.0 and scalar(["up"]) == "up"


def test_shape_reads_predictions_and_probabilities_through_pointers() -> None:
    s = shape(preset="instances", response={"prediction": "/out/labels", "probabilities": "/out/proba"})
    answer = {"out": {"labels": [1, 0], "proba": [[0.1, 0.9], [0.7, 0.3]]}}
    assert s.predictions(answer, 2) == [1, 0]
    assert s.probabilities(answer, 2) == [[0.1, 0.9], [0.7, 0.3]]
    assert shape(preset="flat").probabilities({}, 1) is None
