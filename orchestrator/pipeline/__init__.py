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
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from orchestrator.config import Allow, Secrets
from orchestrator.errors import PipelineError
from orchestrator.gate.spec import ModelCheckSpec, check_model_check
from orchestrator.masking import Masker
from orchestrator.pipeline.policy import Policy, check_pipeline
from orchestrator.pipeline.strategy import Strategy, StrategySpec

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_ALIASES = 100
NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# ${NAME} or ${secrets.NAME}; "$${" is a literal "${".
VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
VAR_NAME_RE = re.compile(r"^(secrets\.)?[A-Za-z_][A-Za-z0-9_]*$")
FULL_VAR_RE = re.compile(r"^\$\{(secrets\.)?[A-Za-z_][A-Za-z0-9_]*\}$")
BUILTIN_VARS = ("BUILD_NUMBER", "BUILD_ID", "GIT_SHA", "GIT_SHA_SHORT", "BRANCH", "REPO")
_YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")}


# -- schema ------------------------------------------------------------------------------------------


def _int_or_var(v: Any) -> Any:
    """Ints may be written as "${VAR}" (resolved at run time) or as a numeric string."""
    if isinstance(v, str):
        if FULL_VAR_RE.match(v):
            return v
        try:
            return int(v)
        except ValueError:
            raise ValueError("must be an integer or a ${VAR} that holds one") from None
    return v


IntOrVar = Annotated[int | str, BeforeValidator(_int_or_var)]
Seconds = Annotated[float, Field(gt=0, le=7 * 86400)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistryAuth(_Spec):
    username: str
    password: str


class DockerBuildSpec(_Spec):
    context: str = "."
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = Field(default_factory=dict)
    tags: list[str] | None = Field(default=None, min_length=1)  # default: [BUILD_NUMBER]
    target: str | None = None
    pull: bool = False
    no_cache: bool = False


class DockerRunSpec(_Spec):
    command: list[str] | None = None
    image: str | None = None  # default: the image built by the docker_build step
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    network: str | None = None
    volumes: list[str] = Field(default_factory=list)
    privileged: bool = False
    memory: str | None = None  # default and most: the server's limits (reach.limits)
    cpus: float | None = Field(default=None, gt=0)
    pids_limit: int | None = Field(default=None, ge=16)
    artifacts: str | None = None  # container path where the build's artifact directory is mounted


class DockerPushSpec(_Spec):
    tags: list[str] | None = Field(default=None, min_length=1)  # default: [BUILD_NUMBER]
    auth: RegistryAuth | None = None
    retries: int = Field(default=3, ge=1, le=10)


class DeploySpec(_Spec):
    environment: str
    promote: Literal["auto", "manual"] = "auto"
    strategy: Strategy = Field(default_factory=StrategySpec)  # switch | canary | shadow (+ watch)


class RollbackSpec(_Spec):
    environment: str


class ShellSpec(_Spec):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None


class When(_Spec):
    branch: list[str] = Field(default_factory=list)


KIND_KEYS = ("docker_build", "docker_run", "docker_push", "deploy", "rollback", "shell", "model_check")


class Step(_Spec):
    """One step: a name, exactly one kind key with its spec, and optional controls."""

    name: str = Field(pattern=NAME_RE)
    timeout: Seconds | None = None
    continue_on_error: bool = False
    when: When | None = None
    docker_build: DockerBuildSpec | None = None
    docker_run: DockerRunSpec | None = None
    docker_push: DockerPushSpec | None = None
    deploy: DeploySpec | None = None
    rollback: RollbackSpec | None = None
    shell: ShellSpec | None = None
    model_check: ModelCheckSpec | None = None

    @property
    def kinds(self) -> list[str]:
        return [k for k in KIND_KEYS if getattr(self, k) is not None]

    @property
    def kind(self) -> str:
        kinds = self.kinds
        return kinds[0] if kinds else ""

    @property
    def spec(self) -> Any:
        """The spec model of this step's kind (DockerBuildSpec, DeploySpec, ...)."""
        return getattr(self, self.kind) if self.kind else None

    def runs_on(self, branch: str) -> bool:
        return self.when is None or not self.when.branch or branch in self.when.branch


class HostSpec(_Spec):
    host: str = Field(min_length=1)
    port: IntOrVar = 22
    user: str = "root"


class ContainerSpec(_Spec):
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
    port: IntOrVar = 5000
    publish: IntOrVar | None = None
    volumes: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    memory: str | None = None
    cpus: float | None = Field(default=None, gt=0)


class HealthSpec(_Spec):
    path: str = Field(default="/ready", pattern=r"^/")
    status: int = 200
    interval: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=3, ge=1)  # the edge's rise: passes in a row before a server gets traffic
    fall: int = Field(default=3, ge=1)  # the edge's fall: failures in a row before it takes none


class EdgeSpec(_Spec):
    """The environment's HAProxy edge image: built by mlship FROM ``base_image`` (any Debian bookworm
    image; default: the server's ``edge_base_image``), pushed to ``repository`` (default:
    ``mlship-edge`` in the app image's registry)."""

    base_image: str | None = Field(default=None, min_length=1)
    repository: str | None = None


class Environment(_Spec):
    hosts: list[HostSpec] = Field(min_length=1)
    parallelism: int = Field(default=1, ge=1)
    registry_login: RegistryAuth | None = None
    container: ContainerSpec
    health: HealthSpec = Field(default_factory=lambda: HealthSpec())
    drain_seconds: float = Field(default=2.0, ge=0)
    edge: EdgeSpec = Field(default_factory=lambda: EdgeSpec())


class Pipeline(_Spec):
    """A validated pipeline. ``secret_values`` lists every secret value substituted into it."""

    version: Literal[1]
    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    timeout: Seconds | None = None
    steps: list[Step] = Field(min_length=1)
    environments: dict[str, Environment] = Field(default_factory=dict)
    _secret_values: tuple[str, ...] = PrivateAttr(default=())

    @property
    def secret_values(self) -> tuple[str, ...]:
        return self._secret_values

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


# -- loading -----------------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]


def _fmt_path(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Errors:
    """Collects (line, path, message) and raises one PipelineError naming file, line and key."""

    def __init__(self, filename: str, root: yaml.Node | None = None) -> None:
        self.filename = filename
        self.root = root
        self.items: list[tuple[int | None, str, str]] = []
        self.mask = Masker()  # the secrets substituted so far: an error message may quote a value

    def add(self, message: str, path: Path_ = (), line: int | None = None, key_line: bool = False) -> None:
        if line is None and self.root is not None:
            line = _line_of(self.root, path, key_line)
        self.items.append((line, _fmt_path(path), message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = []
        for line, key, msg in self.items:
            where = f"{self.filename}:{line}" if line else self.filename
            lines.append(self.mask(f"{where}: {key}: {msg}" if key else f"{where}: {msg}"))
        first = self.items[0]
        raise PipelineError(
            "\n".join(lines), file=self.filename, line=first[0], key=self.mask(first[1]), errors=lines
        )


def _line_of(root: yaml.Node, path: Path_, key_line: bool) -> int | None:
    """The 1-based line of the node at ``path`` (the deepest part of it that exists)."""
    node = root
    line = node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    line = (k if key_line and part == path[-1] else v).start_mark.line + 1
                    node = v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG) :] if tag.startswith(_YAML_TAG) else tag


def _scan_events(text: str, errs: _Errors) -> None:
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


def _expanded_size(node: yaml.Node, errs: _Errors) -> int:
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


def _duplicate_keys(node: yaml.Node, errs: _Errors, path: Path_ = (), seen: set[int] | None = None) -> None:
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


class _Resolver:
    """Substitutes ${NAME} and ${secrets.NAME} in string values; records secrets for masking."""

    def __init__(
        self, variables: Mapping[str, str] | None, secrets: Secrets | None, errs: _Errors, policy: Policy
    ) -> None:
        self.variables = variables
        self.secrets = secrets
        self.errs = errs
        self.policy = policy
        self.secret_values: list[str] = []

    def value(self, v: Any, path: Path_) -> Any:
        if isinstance(v, dict):
            return {k: self.value(x, (*path, str(k))) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x, (*path, i)) for i, x in enumerate(v)]
        if isinstance(v, str) and "$" in v:
            return VAR_RE.sub(lambda m: self._one(m, path), v)
        return v

    def _one(self, m: re.Match[str], path: Path_) -> str:
        if m.group(0) == "$${":
            return "${"
        name = m.group(1).strip()
        if not VAR_NAME_RE.match(name):
            self.errs.add(
                f"'${{{m.group(1)}}}' is not a variable reference: write ${{NAME}} or "
                "${secrets.NAME} (letters, digits, _), or $${ for a literal ${",
                path,
            )
            return m.group(0)
        if name.startswith("secrets."):
            secret = name[len("secrets.") :]
            refused = self.policy.secret_refusal(secret, path)
            if refused:
                self.errs.add(refused, path)
                return m.group(0)
            if self.secrets is None:
                return m.group(0)
            value = self.secrets.get(secret)
            if value is None:
                self.errs.add(
                    f"secret '{secret}' is not set on the server: export {secret}=... for the "
                    "worker or put a file of that name in its secrets directory",
                    path,
                )
                return m.group(0)
            self.secret_values.append(value)
            self.errs.mask.add(value)
            return value
        if self.variables is None:
            return m.group(0)
        if name not in self.variables:
            known = ", ".join(sorted(self.variables))
            hint = difflib.get_close_matches(name, list(self.variables), n=1)
            mean = f" (did you mean ${{{hint[0]}}}?)" if hint else ""
            self.errs.add(
                f"undefined variable ${{{name}}}{mean}; defined: {known} "
                "(server variables come from the server configuration's vars)",
                path,
            )
            return m.group(0)
        return str(self.variables[name])


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


class _Seen:
    """What earlier steps provide to later ones, while the steps are checked in order."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.built = False
        self.artifacts = False


def _semantic_checks(p: Pipeline, policy: Policy, errs: _Errors) -> None:
    """Checks across keys; what the repository may reach is policy.check_pipeline's."""
    seen = _Seen()
    for i, step in enumerate(p.steps):
        _check_step(p, i, step, seen, errs)
    for env_name in p.environments:
        if not re.match(NAME_RE, env_name):
            errs.add(
                f"invalid environment name '{env_name}': use lowercase letters, digits, '-' and '_'",
                ("environments", env_name),
                key_line=True,
            )
    check_pipeline(p, policy, errs.add)


def _check_step(p: Pipeline, i: int, step: Step, seen: _Seen, errs: _Errors) -> None:
    where: Path_ = ("steps", i)
    if step.name in seen.names:
        errs.add(
            f"duplicate step name '{step.name}' (also steps[{seen.names[step.name]}]); names must be unique",
            (*where, "name"),
        )
    seen.names.setdefault(step.name, i)
    kinds = step.kinds
    if not kinds:
        errs.add(f"step '{step.name}' has no kind: add exactly one of {', '.join(KIND_KEYS)}", where)
    elif len(kinds) > 1:
        errs.add(
            f"step '{step.name}' has {len(kinds)} kinds ({', '.join(kinds)}); a step does exactly one "
            "thing: split it into several steps",
            where,
        )
    kind = step.kind
    if kind == "docker_build":
        seen.built = True
        _check_build_paths(step.spec, (*where, kind), errs)
    elif kind == "docker_run":
        _check_run(step, seen, (*where, kind), errs)
    elif kind == "model_check":
        check_model_check(step, p, seen.built, seen.artifacts, i, errs)
    elif kind == "docker_push" and not seen.built:
        errs.add(
            f"step '{step.name}' pushes the image built by an earlier docker_build step, but none "
            "comes before it",
            (*where, kind),
        )
    elif kind in ("deploy", "rollback"):
        env = step.spec.environment
        if env not in p.environments:
            known = ", ".join(sorted(p.environments)) or "none defined"
            errs.add(f"unknown environment '{env}'; environments: {known}", (*where, kind, "environment"))


def _check_build_paths(spec: DockerBuildSpec, where: Path_, errs: _Errors) -> None:
    for key in ("context", "dockerfile"):
        value = getattr(spec, key)
        if not _relative_inside(value):
            errs.add(
                f"{key} must be a path inside the repository (relative, no '..'), got {value!r}",
                (*where, key),
            )


def _check_run(step: Step, seen: _Seen, where: Path_, errs: _Errors) -> None:
    spec: DockerRunSpec = step.spec
    if spec.image is None and not seen.built:
        errs.add(
            f"step '{step.name}' runs the image built by an earlier docker_build step, but none "
            "comes before it: add one, or set image:",
            where,
        )
    if spec.artifacts is not None:
        seen.artifacts = True
        _check_artifacts_mount(spec.artifacts, (*where, "artifacts"), errs)


def _check_artifacts_mount(target: str, where: Path_, errs: _Errors) -> None:
    parts = target.split("/")
    if not target.startswith("/") or target == "/" or ".." in parts or ":" in target:
        errs.add(
            f"artifacts must be an absolute path inside the container (not '/', no '..' or ':'), "
            f"e.g. /artifacts; got {target!r}",
            where,
        )


def _relative_inside(value: str) -> bool:
    return not value.startswith("/") and ".." not in value.split("/") and "\\" not in value


def parse_yaml(text: str, filename: str = "pipeline.yaml") -> tuple[Any, yaml.Node | None]:
    """Safe-load ``text`` with caps against YAML bombs; return (data, root node for line numbers)."""
    errs = _Errors(filename)
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
    errs = _Errors(filename, root)
    if not isinstance(data, dict):
        errs.add(
            "the top level must be a mapping with version, name, image and steps"
            + ("" if data is not None else " (the file is empty)")
        )
        errs.raise_if_any()
    resolver = _Resolver(variables, secrets, errs, policy)
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
    _semantic_checks(pipeline, policy, errs)
    errs.raise_if_any()
    pipeline._secret_values = tuple(dict.fromkeys(resolver.secret_values))
    return pipeline


def build_variables(build: Any, server_vars: Mapping[str, str]) -> dict[str, str]:
    """The ${VARS} of one build: server variables, then the builtins (which always win)."""
    return {
        **server_vars,
        "BUILD_NUMBER": str(build.number),
        "BUILD_ID": str(build.id),
        "GIT_SHA": build.sha,
        "GIT_SHA_SHORT": build.sha[:7],
        "BRANCH": build.branch,
        "REPO": build.repo,
    }
