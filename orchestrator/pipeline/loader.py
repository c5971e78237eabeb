"""pipeline.yaml → a validated ``Pipeline``: safe YAML, a strict schema, ${VARS}, and errors with lines.

Loading goes in stages, each stopping with every error it found:

1. size cap, then a streaming pass over the YAML events (iterative, so deep nesting cannot blow the
   stack): nesting depth, node and alias counts, and only plain data tags (``!!python/...`` refused);
2. compose the node graph (marks give line numbers), refuse alias graphs that expand too far;
3. construct plain data with the safe constructor, then substitute ``${VAR}`` and ``${secrets.NAME}``;
4. validate with pydantic (unknown keys are errors), then the checks across keys (unique step names,
   known environments, exactly one kind per step, what the server configuration allows).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.config import Allow, Secrets
from orchestrator.errors import PipelineError
from orchestrator.pipeline.checks import semantic_checks
from orchestrator.pipeline.diagnostics import Errors, Path_
from orchestrator.pipeline.policy import Policy
from orchestrator.pipeline.schema import KIND_KEYS, Pipeline, Step
from orchestrator.pipeline.variables import Resolver

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_ALIASES = 100
_YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")}


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag


def _scan_events(text: str, errs: Errors) -> None:
    """Depth, size, alias and tag checks over the event stream (no recursion, no construction)."""
    depth = nodes = aliases = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            line = ev.start_mark.line + 1 if ev.start_mark else None
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    errs.add(f"nested deeper than {MAX_DEPTH} levels; a pipeline needs far fewer", line=line)
                    return
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(ev, (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent)):
                nodes += 1
                if nodes > MAX_NODES:
                    errs.add(f"more than {MAX_NODES} YAML nodes; refused as too large", line=line)
                    return
            if isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    errs.add(
                        f"more than {MAX_ALIASES} YAML aliases; refused as a possible YAML bomb", line=line
                    )
                    return
            tag = getattr(ev, "tag", None)
            if isinstance(ev, (yaml.ScalarEvent, yaml.CollectionStartEvent)) and tag and tag != "!":
                full = tag if not tag.startswith("!!") else _YAML_TAG + tag[2:]
                if full not in PLAIN_TAGS:
                    errs.add(
                        f"tag '{_show_tag(full)}' is not allowed: pipeline.yaml holds plain data "
                        "(strings, numbers, booleans, lists, mappings)",
                        line=line,
                    )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errs.add(f"invalid YAML: {exc.problem or exc.context}", line=mark.line + 1 if mark else None)


def _expanded_size(node: yaml.Node, errs: Errors) -> int:
    """Nodes the document expands to once aliases are followed (memoised; cycles refused)."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in memo:
            return memo[id(n)]
        if id(n) in active:
            raise PipelineError("recursive alias")
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        active.discard(id(n))
        memo[id(n)] = total
        return total

    try:
        return size(node)
    except PipelineError:
        errs.add("an alias refers to itself (recursive structure); refused", line=node.start_mark.line + 1)
        return 0


def _duplicate_keys(node: yaml.Node, errs: Errors, path: Path_ = (), seen: set[int] | None = None) -> None:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != _YAML_TAG + "merge":
                if k.value in keys:
                    errs.add(
                        f"duplicate key '{k.value}' (a mapping may name each key once)",
                        path=(*path, k.value),
                        line=k.start_mark.line + 1,
                    )
                keys.add(k.value)
            _duplicate_keys(v, errs, (*path, str(k.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, c in enumerate(node.value):
            _duplicate_keys(c, errs, (*path, i), seen)


def _model_at(loc: Path_) -> type[BaseModel] | None:
    """The schema model that owns the mapping at ``loc`` (for listing allowed keys)."""
    model: Any = Pipeline
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside list[X], dict[str, X], X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and (part in ("int", "str", "float", "bool") or part.startswith("function-"))


def _describe(e: Any) -> tuple[Path_, str, bool]:
    """(path, message, points at the key) for one pydantic error, in the user's words."""
    loc: Path_ = tuple(p for p in e["loc"] if not _is_union_member(p))
    kind = e["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(_strip_dict_keys(loc[:-1]))
        allowed = _allowed_keys(model) if model else []
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        msg = f"unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        if model is Step:
            msg += (
                f"; a step has name, timeout, continue_on_error, when and one kind of: {', '.join(KIND_KEYS)}"
            )
        elif allowed:
            msg += f"; allowed: {', '.join(allowed)}"
        return loc, msg, True
    if kind == "missing":
        return loc, f"missing required key '{loc[-1]}'", False
    if (
        loc
        and loc[-1] == "timeout"
        and kind in ("greater_than", "less_than_equal", "float_parsing", "float_type")
    ):
        return loc, f"must be a number of seconds greater than 0 (at most 604800), got {e['input']!r}", False
    if kind == "literal_error" and loc == ("version",):
        return loc, f"unsupported version {e['input']!r}; this server reads version: 1", False
    if kind == "too_short":
        return loc, "must not be empty", False
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return (
            loc,
            (
                f"invalid name {e['input']!r}: use lowercase letters, digits, '-' and '_' "
                "(at most 63, starting with a letter or digit)"
            ),
            False,
        )
    msg = str(e["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return loc, msg[0].lower() + msg[1:] if msg else msg, False


def _strip_dict_keys(loc: Path_) -> Path_:
    """environments.qa.container → environments.container for model lookup (dict keys are free)."""
    out: list[str | int] = []
    for i, p in enumerate(loc):
        if i > 0 and loc[i - 1] in ("environments", "thresholds") and len(out) and out[-1] == loc[i - 1]:
            continue
        out.append(p)
    return tuple(out)


def parse_yaml(text: str, filename: str = "pipeline.yaml") -> tuple[Any, yaml.Node | None]:
    """Safe-load ``text`` with caps against YAML bombs; return (data, root node for line numbers)."""
    errs = Errors(filename)
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_BYTES:
        # Callers read at most MAX_BYTES + 1 bytes, so ``size`` may be a lower bound.
        errs.add(
            f"file is larger than the limit of {MAX_BYTES} bytes ({size} bytes read); "
            "a pipeline needs far less: keep data and scripts in other files"
        )
        errs.raise_if_any()
    _scan_events(text, errs)
    errs.raise_if_any()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        if _expanded_size(node, errs) > MAX_NODES:
            errs.add(
                f"aliases expand the document to more than {MAX_NODES} nodes; refused as a YAML bomb",
                line=node.start_mark.line + 1,
            )
        errs.raise_if_any()
        errs.root = node
        _duplicate_keys(node, errs)
        errs.raise_if_any()
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        errs.add(f"invalid YAML: {exc.problem or exc.context}", line=mark.line + 1 if mark else None)
        errs.raise_if_any()
        raise
    finally:
        loader.dispose()


def load_pipeline(
    text: str,
    filename: str = "pipeline.yaml",
    *,
    variables: Mapping[str, str] | None = None,
    secrets: Secrets | None = None,
    allow: Allow | None = None,
    policy: Policy | None = None,
) -> Pipeline:
    """Parse and validate a pipeline.

    ``variables``: the ${NAME} values (builtins + server vars); None leaves references unresolved
    (``orchestrator validate``). ``secrets``: resolves ${secrets.NAME}; None leaves them unresolved.
    ``policy``: what the repository may reach (pipeline/policy.py). The worker always passes the
    repository's; None (no repository known: validate, a library caller) applies the fixed rules
    only: ``allow``, the server's own secret names, volume and network forms. Raises PipelineError
    naming file, line and key, with substituted secrets masked.
    """
    if policy is None:
        policy = replace(Policy.unknown(allow), resolved=variables is not None)
    data, root = parse_yaml(text, filename)
    errs = Errors(filename, root)
    if not isinstance(data, dict):
        errs.add(
            "the top level must be a mapping with version, name, image and steps"
            + ("" if data is not None else " (the file is empty)")
        )
        errs.raise_if_any()
    resolver = Resolver(variables, secrets, errs, policy)
    data = resolver.value(data, ())
    errs.raise_if_any()
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            loc, msg, at_key = _describe(e)
            errs.add(msg, loc, key_line=at_key)
        errs.raise_if_any()
        raise
    semantic_checks(pipeline, policy, errs)
    errs.raise_if_any()
    pipeline._secret_values = tuple(dict.fromkeys(resolver.secret_values))
    return pipeline
