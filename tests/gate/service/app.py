"""A user's model service for the gate tests: no mlship code, only Flask and scikit-learn.

MODEL picks the model (trained at start from /srv/train_*.csv):
  classifier          LogisticRegression; POST /predict {"instances": [{...}, ...]}
                      → {"predictions": [label, ...], "probabilities": [[p, ...], ...]}
  classifier-weak     the same, trained on the first feature only
  classifier-shuffled the same, trained on shuffled labels
  regressor           LinearRegression; POST /predict {x0: .., x1: ..} → "[221900.]" (a numpy string)
  regressor-malformed the same, but rows with x1 < 0 get {"oops": "no model"}
"""

import csv
import os
import random

from flask import Flask, jsonify, request
from sklearn.linear_model import LinearRegression, LogisticRegression


def read(path, target):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    features = [c for c in rows[0] if c != target]
    return features, [[float(r[f]) for f in features] for r in rows], [r[target] for r in rows]


MODEL = os.environ.get("MODEL", "classifier")
app = Flask(__name__)
if MODEL.startswith("classifier"):
    FEATURES, X, Y = read("/srv/train_cls.csv", "species")
    if MODEL == "classifier-shuffled":
        random.Random(7).shuffle(Y)
    columns = [0] if MODEL == "classifier-weak" else list(range(len(FEATURES)))
    model = LogisticRegression(max_iter=1000).fit([[r[c] for c in columns] for r in X], Y)
else:
    FEATURES, X, Y = read("/srv/train_reg.csv", "y")
    model = LinearRegression().fit(X, [float(v) for v in Y])


@app.get("/ready")
def ready():
    return "ok"


@app.post("/predict")
def predict():
    body = request.get_json()
    if MODEL.startswith("classifier"):
        rows = [[[float(r[f]) for f in FEATURES][c] for c in columns] for r in body["instances"]]
        return jsonify(
            predictions=model.predict(rows).tolist(), probabilities=model.predict_proba(rows).tolist()
        )
    if MODEL == "regressor-malformed" and float(body["x1"]) < 0:
        return jsonify(oops="no model")
    return jsonify(str(model.predict([[float(body[f]) for f in FEATURES]])))  # the seed's "[221900.]"


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=5000)
