"""GitLab and Gitea decisions on hostile payloads (hypothesis, pure): a signed payload whose fields
have any JSON type gives a Decision or a PayloadError naming the field — never another exception,
and never a build of something that is not a 40-hex sha."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import RepoConfig, Triggers
from orchestrator.errors import PayloadError
from orchestrator.intake import gitea, gitlab
from orchestrator.models import is_sha

from .forge_helpers import payload

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
CASES = [
    (gitlab, "Merge Request Hook", "gitlab/merge_request.merge", "object_attributes"),
    (gitlab, "Push Hook", "gitlab/push", None),
    (gitea, "pull_request", "gitea/pull_request.closed.merged", "pull_request"),
    (gitea, "push", "gitea/push", None),
]


def repo(forge: str) -> RepoConfig:
    api = {"api_url": "https://g.example.com/api/v1"} if forge == "gitea" else {}
    triggers = Triggers(pull_request_merged=("*",), push=("*",))
    return RepoConfig(full_name="a/b", clone_url="x", forge=forge, triggers=triggers, **api)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(CASES), data=st.data(), value=JSON)
def test_any_field_of_any_type(
    case: tuple[Any, str, str, str | None], data: st.DataObject, value: Any
) -> None:
    module, event, name, nested = case
    p = payload(name)
    target = p[nested] if nested else p
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = value
    try:
        module.repository_of(p)
        d = module.decide(event, p, repo(module.NAME))
    except PayloadError as exc:
        assert exc.code == "bad_payload" and str(exc)
        return
    assert d.reason
    if d.trigger is not None:
        assert is_sha(d.trigger.sha) and d.trigger.ref == "refs/heads/" + d.trigger.branch
