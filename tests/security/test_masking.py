"""One masker for everything stored or sent (issue 18, finding 4): the build log, the service log,
errors and details all hide a secret in its plain, per-line, base64 and JSON-escaped forms."""

from __future__ import annotations

import base64
import io
import json

import pytest

from orchestrator import servicelog
from orchestrator.build import log as buildlog
from orchestrator.masking import MASK, Masker

SECRET = 'pa"ss\\wörd-0123456789'
PEM = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\n-----END KEY-----"


@pytest.mark.parametrize(
    "text",
    [
        f"token={SECRET}",
        json.dumps({"t": SECRET}),  # JSON-escaped: quote, backslash, non-ASCII
        "x" + base64.b64encode(SECRET.encode()).decode() + "y",
        "blob " + base64.b64encode(b"ab" + SECRET.encode()).decode(),  # at another byte alignment
        "line: AAAAB3NzaC1yc2EAAAADAQAB",  # one line of a multi-line secret
    ],
)
def test_every_form_of_a_secret_is_masked(text: str) -> None:
    masked = Masker([SECRET, PEM])(text)
    assert SECRET not in masked and "AAAAB3NzaC1yc2EAAAADAQAB" not in masked
    assert MASK in masked


def test_build_log_and_service_log_share_the_masker() -> None:
    assert buildlog.Masker is Masker
    out = io.StringIO()
    servicelog.configure([SECRET], stream=out)
    try:
        servicelog.event(
            servicelog.get("test"), "leak", value=SECRET, encoded=base64.b64encode(SECRET.encode()).decode()
        )
    finally:
        servicelog.configure()
    line = out.getvalue().splitlines()[-1]
    assert "ss" not in json.loads(line)["value"] and json.loads(line)["encoded"] == MASK


def test_details_are_masked_deeply() -> None:
    m = Masker([SECRET])
    assert m.data({"hosts": [f"h {SECRET}"], SECRET: 1, "n": 2}) == {"hosts": [f"h {MASK}"], MASK: 1, "n": 2}
