"""What the http gate sends and how it reads the answers: request presets, JSON pointers, predictions.

Pure functions over JSON-shaped data (tested table-driven). Presets (``request.preset``):

- ``flat``: one row per request, the row itself as a JSON object (the service mlship replaces);
  the answer is a number, a JSON list, or a numpy-style string such as ``"[221900.]"``;
- ``instances``: ``{"instances": [row, ...]}`` (rows as objects, or as lists in feature order);
- ``mlflow_split`` / ``mlflow_records``: MLflow's ``dataframe_split`` / ``dataframe_records`` bodies;
- ``kserve_v2``: the Open Inference Protocol (KServe v2) tensor request at ``/v2/models/<m>/infer``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.gate.spec import RequestSpec, ResponseSpec

DEFAULT_PATH = {"mlflow_split": "/invocations", "mlflow_records": "/invocations"}
DEFAULT_POINTER = {"flat": "", "kserve_v2": "/outputs/0/data"}
DEFAULT_BATCH = 100
EXCERPT = 300
_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|[^\s,\[\]]+")


class AnswerError(ValueError):
    """An answer the gate cannot read (the message says what was expected); ``index``: which row."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Shape:
    """The request and response shapes of one service, from pipeline.yaml."""

    request: RequestSpec
    response: ResponseSpec
    task: str = "regression"  # regression: every prediction must be a number

    @property
    def batch_size(self) -> int:
        if self.request.preset == "flat":
            return 1
        return self.request.batch_size or DEFAULT_BATCH

    @property
    def path(self) -> str:
        if self.request.path:
            return self.request.path
        if self.request.preset == "kserve_v2":
            return f"/v2/models/{self.request.model_name}/infer"
        return DEFAULT_PATH.get(self.request.preset, "/predict")

    @property
    def pointer(self) -> str:
        if self.response.prediction is not None:
            return self.response.prediction
        return DEFAULT_POINTER.get(self.request.preset, "/predictions")

    def body(self, rows: list[dict[str, Any]], features: tuple[str, ...]) -> Any:
        """The JSON body for ``rows`` (feature values by name)."""
        preset = self.request.preset
        if preset == "flat":
            return rows[0]
        lists = [[r[f] for f in features] for r in rows]
        if preset == "instances":
            return {"instances": lists if self.request.rows == "lists" else rows}
        if preset == "mlflow_split":
            return {"dataframe_split": {"columns": list(features), "data": lists}}
        if preset == "mlflow_records":
            return {"dataframe_records": rows}
        tensor = {
            "name": self.request.input_name,
            "shape": [len(rows), len(features)],
            "datatype": self.request.datatype,
            "data": [v for row in lists for v in row],  # row-major, as the protocol defines
        }
        return {"inputs": [tensor]}

    def predictions(self, answer: Any, n: int) -> list[Any]:
        """The ``n`` predictions in a decoded answer (raises AnswerError saying what is wrong)."""
        out = predictions(resolve(answer, self.pointer), n, self.pointer)
        if self.task == "regression":
            for j, v in enumerate(out):
                if isinstance(v, str):
                    raise AnswerError(
                        f"prediction {j} at {self.pointer or '/'}: {v!r} is not a number", index=j
                    )
        return out

    def probabilities(self, answer: Any, n: int) -> list[list[float]] | None:
        pointer = self.response.probabilities
        if pointer is None:
            return None
        return probabilities(resolve(answer, pointer), n, pointer)


def resolve(doc: Any, pointer: str) -> Any:
    """The value at JSON pointer ``pointer`` (RFC 6901) in ``doc``; "" is the whole document."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise AnswerError(f"JSON pointer {pointer!r} must be empty or start with '/'")
    here = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(here, dict) and token in here:
            here = here[token]
        elif isinstance(here, list) and re.fullmatch(r"0|[1-9][0-9]*", token) and int(token) < len(here):
            here = here[int(token)]
        else:
            raise AnswerError(f"nothing at {pointer} (no {token!r} in {_kind(here)})")
    return here


def _kind(v: Any) -> str:
    if isinstance(v, dict):
        keys = ", ".join(list(v)[:8])
        return f"an object with keys {keys}" if keys else "an empty object"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    return f"a {type(v).__name__}"


def scalar(value: Any) -> Any:
    """One prediction: a number or a label; a numpy-style string "[221900.]" or "3.5" becomes a number."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            items = numpy_string(text)
            if len(items) != 1:
                raise AnswerError(f"expected one value, the string holds {len(items)}: {value!r}")
            return items[0]
        return _number_or_label(text)
    if isinstance(value, list) and len(value) == 1:
        return scalar(value[0])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnswerError(f"expected a number or a label, got {json.dumps(value)[:EXCERPT]}")
    return value


def _number_or_label(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eEn") else int(text)
    except ValueError:
        return text


def numpy_string(text: str) -> list[Any]:
    """The values of a printed numpy array, e.g. "[221900.]", "[1.5 2. ]", "[[0.2 0.8]]", "['a' 'b']"."""
    out: list[Any] = []
    for token in _TOKEN.findall(text):
        if token[0] in "'\"":
            out.append(token[1:-1])
            continue
        try:
            out.append(float(token))
        except ValueError:
            raise AnswerError(f"{token!r} in {text[:EXCERPT]!r} is not a number") from None
    return out


def predictions(value: Any, n: int, pointer: str = "") -> list[Any]:
    """``n`` predictions from the value at the pointer: a list of n, or (for one row) a single value."""
    if isinstance(value, str) and value.strip().startswith("["):
        value = numpy_string(value)
    if not isinstance(value, list):
        value = [value]
    if len(value) != n:
        where = f" at {pointer}" if pointer else ""
        raise AnswerError(f"expected {n} prediction(s){where}, got {len(value)}")
    out = []
    for j, v in enumerate(value):
        try:
            out.append(scalar(v))
        except AnswerError as exc:
            raise AnswerError(
                f"prediction {j}{' at ' + pointer if pointer else ''}: {exc}", index=j
            ) from None
    return out


def probabilities(value: Any, n: int, pointer: str) -> list[list[float]]:
    """One list of class probabilities per row; a list of n numbers means P(second class) (binary)."""
    if isinstance(value, str):
        value = numpy_string(value)
    if not isinstance(value, list):
        raise AnswerError(f"expected class probabilities at {pointer}, got {_kind(value)}")
    if n == 1 and value and all(isinstance(v, int | float) for v in value) and len(value) > 1:
        value = [value]
    if len(value) != n:
        raise AnswerError(f"expected {n} probability row(s) at {pointer}, got {len(value)}")
    out = []
    for row in value:
        if isinstance(row, int | float) and not isinstance(row, bool):
            out.append([1.0 - float(row), float(row)])
        elif isinstance(row, list) and row and all(isinstance(p, int | float) for p in row):
            out.append([float(p) for p in row])
        else:
            raise AnswerError(
                f"a probability row at {pointer} must be a list of numbers, got {json.dumps(row)[:80]}"
            )
    return out


def excerpt(text: str) -> str:
    """The start of a response body, on one line, for error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT else flat[:EXCERPT] + " …"
