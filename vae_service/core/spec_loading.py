"""Reading job specs from YAML safely and turning every mistake into `path: reason (line N)`.

Safety: YAML is composed with the safe loader (no Python tags), files over 1 MiB are refused,
and a document that nests deeper than `MAX_NESTING`, repeats a key, or whose alias expansion
would exceed `MAX_EXPANDED_NODES` nodes or `MAX_NORMALISED_BYTES` bytes (a "billion laughs"
bomb) is refused before anything is expanded. A valid spec whose normalised form exceeds
`MAX_NORMALISED_BYTES` is refused too.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from vae_service.core.encode_spec import EncodeDatasetSpec
from vae_service.core.spec import TrainSpec
from vae_service.core.sweep_spec import GRID_LIMIT, MAX_GRID_POINTS, SKIP_SPACE_CHECK, SweepSpec, space_problems
from vae_service.core.yaml_shape import duplicate_key, path_at, shape_problem

MAX_SPEC_BYTES = 1 << 20
MAX_EXPANDED_NODES = 10_000
MAX_NESTING = 32  # a spec nests 4 levels; a sweep's grid of lists a few more
# The byte budget, for a spec's keys and values (aliases expanded) and for its normalised form:
# the normalised spec travels to its Ray job in one environment variable (queue/job_env.py),
# and Linux refuses a single one over 128 KiB ("Argument list too long").
MAX_NORMALISED_BYTES = 64 * 1024
JobSpec = TrainSpec | SweepSpec | EncodeDatasetSpec
SPEC_KINDS = {"train": TrainSpec, "sweep": SweepSpec, "encode-dataset": EncodeDatasetSpec}


class _SpecLoader(yaml.SafeLoader):
    """The safe loader, plus YAML 1.2 floats without a dot or exponent sign (3e-4, 1e3, 1.0e5):
    PyYAML (YAML 1.1) reads those as strings, editors (yaml-language-server) as numbers."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class SpecProblem:
    path: str
    reason: str
    line: Optional[int] = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        # A path is made of the spec's own keys: control characters in them (a newline, a
        # terminal escape) are shown escaped, so that one problem stays one harmless line.
        path = self.path if self.path.isprintable() else self.path.encode("unicode_escape").decode("ascii")
        return f"{path}: {self.reason}{where}" if path else f"{self.reason}{where}"


class SpecError(Exception):
    """A spec that cannot be used; `problems` holds one entry per mistake."""

    def __init__(self, source: str, problems: list[SpecProblem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


# ---------------------------------------------------------------------------------------------
# YAML → (plain data, line index)


def _compose(text: str, source: str, path: str = "") -> Optional[yaml.Node]:
    """The YAML node tree, refused when it nests deeper than MAX_NESTING (the parser recurses:
    a few hundred levels would end in a RecursionError), expands past the node or byte budget
    (aliases), or repeats a key. `path`: the --set field whose value `text` is."""
    what = "value: " if path else ""
    try:
        node = yaml.compose(text, Loader=_SpecLoader)
    except RecursionError:
        raise SpecError(source, [SpecProblem(path, f"{what}nested more than {MAX_NESTING} levels deep; refused")]) from None
    if node is None:
        return None
    problem = shape_problem(node, in_value=bool(path), max_depth=MAX_NESTING, max_nodes=MAX_EXPANDED_NODES,
                            max_bytes=MAX_NORMALISED_BYTES)
    if problem:
        where, reason = problem
        raise SpecError(source, [SpecProblem(_join(path, where), what + reason)])
    duplicate = duplicate_key(node)
    if duplicate:
        where, line = duplicate
        raise SpecError(source, [SpecProblem(_join(path, where), "duplicate key", None if path else line)])
    return node


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _line_index(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Maps each key path to the 1-based line where its value starts."""
    lines = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = prefix + (key_node.value,)
                lines[path] = key_node.start_mark.line + 1
                lines.update({k: v for k, v in _line_index(value_node, path).items() if k != path})
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            lines.update(_line_index(child, prefix + (i,)))
    return lines


def parse_yaml(text: str, source: str = "<spec>") -> tuple[dict, dict[tuple, int]]:
    """Parses one YAML mapping safely; returns it with a path → line index."""
    if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
        raise SpecError(source, [SpecProblem("", f"spec is larger than {MAX_SPEC_BYTES} bytes")])
    try:
        node = _compose(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: its text spans lines
            problem, line = f"unacceptable character #x{exc.character:04x}", text.count("\n", 0, exc.position) + 1
        else:
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError(source, [SpecProblem("", f"YAML syntax error: {problem}", line)]) from None
    if node is None:
        raise SpecError(source, [SpecProblem("", "spec is empty: expected a mapping such as 'kind: train'")])
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise SpecError(source, [SpecProblem("", f"spec must be a mapping of fields, got {kind}", 1)])
    try:
        data = _construct(node)  # from the tree already composed: the text is parsed once
    except yaml.YAMLError as exc:  # e.g. a tag the safe loader refuses: name the field it is in
        mark = getattr(exc, "problem_mark", None)
        where = path_at(node, mark.index) if mark else ""
        raise SpecError(source, [SpecProblem(where, str(getattr(exc, "problem", exc)), mark.line + 1 if mark else None)]) from None
    return data, _line_index(node)


def _construct(node: yaml.Node):
    """The Python data of a composed node tree, as the safe loader would construct it."""
    loader = _SpecLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# --set a.b=c overrides


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` → (["optim", "lr"], 0.0003); the value is read as a YAML scalar."""
    path, sep, raw = assignment.partition("=")
    keys = [k.strip() for k in path.split(".")]
    if not sep or not all(keys):
        raise SpecError("--set", [SpecProblem(assignment, "expected the form a.b.c=value")])
    try:
        node = _compose(raw, "--set", ".".join(keys)) if raw.strip() else None
        value = yaml.load(raw, Loader=_SpecLoader) if node is not None else None
    except yaml.YAMLError:
        value = raw  # not valid YAML: keep it as the literal string
    return keys, value


def apply_overrides(data: dict, assignments: Iterable[str]) -> dict:
    """Applies `--set` assignments to a (copied) spec dict, creating sections as needed."""
    result = copy.deepcopy(data) if data else {}
    for assignment in assignments:
        keys, value = parse_override(assignment)
        section = result
        for depth, key in enumerate(keys[:-1]):
            child = section.get(key)
            if child is None:  # absent or null (an optional section left at its default)
                child = section[key] = {}
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise SpecError("--set", [SpecProblem(where, f"is not a section, cannot set {assignment}")])
            section = child
        section[keys[-1]] = value
    return result


# ---------------------------------------------------------------------------------------------
# validation with readable messages


def _reason(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound} (got {error.get('input')!r})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {error.get('input')!r})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']} (got {error.get('input')!r})" if "input" in error else error["msg"]


def validate_data(data: Any, source: str = "<spec>", lines: Optional[dict] = None, *,
                  max_grid_points: int = MAX_GRID_POINTS) -> JobSpec:
    """Validates a spec dict (`kind: train`, `sweep` or `encode-dataset`), raising SpecError with one
    problem per mistake. `max_grid_points`: a server's lower cap on an all-grid sweep's trials."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError(source, [SpecProblem("", "spec must be a mapping of fields")])
    kind = data.get("kind", "train")
    if not isinstance(kind, str) or kind not in SPEC_KINDS:
        message = f"must be one of {', '.join(repr(k) for k in SPEC_KINDS)} (got {kind!r})"
        raise SpecError(source, [SpecProblem("kind", message, lines.get(("kind",)))])
    try:
        spec = SPEC_KINDS[kind].model_validate(data, context={SKIP_SPACE_CHECK: True, GRID_LIMIT: max_grid_points})
    except ValidationError as exc:
        raise SpecError(source, [_problem(error, lines) for error in exc.errors()]) from None
    if isinstance(spec, SweepSpec):  # paths and values of the space, checked against the train spec
        # "sweep.space.objective.beta" is the key "objective.beta" of sweep → space in the YAML
        problems = [SpecProblem(path, _space_reason(reason), _line(tuple(path.split(".", 2)), lines))
                    for path, reason in space_problems(spec)]
        if problems:
            raise SpecError(source, problems)
    too_large = _normalised_problem(spec, lines)
    if too_large:
        raise SpecError(source, [too_large])
    return spec


def _normalised_problem(spec: JobSpec, lines: dict) -> Optional[SpecProblem]:
    """The byte budget on what the job will receive (--set values and YAML's escaping of
    non-ASCII text can make it larger than what was parsed); names the largest field."""
    size = len(dump_spec(spec).encode("utf-8"))
    if size <= MAX_NORMALISED_BYTES:
        return None
    data, keys = spec.model_dump(mode="json", by_alias=True), []
    while isinstance(data, dict) and data and len(keys) < 4:
        keys.append(max(data, key=lambda k: len(json.dumps(data[k]))))
        data = data[keys[-1]]
    return SpecProblem(".".join(keys), f"too large: the normalised spec would be {size} bytes, over the limit of "
                       f"{MAX_NORMALISED_BYTES} (it is handed to the job in an environment variable)",
                       _line(tuple(keys), lines))


def _space_reason(reason: Any) -> str:
    if isinstance(reason, str):
        return reason
    return f"value {reason['input']!r} is refused: {_reason(reason)}"


def _line(loc: tuple, lines: dict) -> Optional[int]:
    return next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)


def _problem(error: dict, lines: dict) -> SpecProblem:
    # A tagged union (a sweep domain) repeats its tag: sweep.space.x.int.int → sweep.space.x.int
    loc = tuple(part for i, part in enumerate(error["loc"]) if i == 0 or part != error["loc"][i - 1])
    reason = _reason(error)
    field, sep, rest = reason.partition(": ")
    if sep and _FIELD_PATH.fullmatch(field):  # a cross-field check names its own field
        loc, reason = loc + tuple(field.split(".")), rest
    path = ".".join(str(part) for part in loc)
    return SpecProblem(path, reason, _line(loc, lines))


# "model.hidden: …" from a TrainSpec check, "sweep.space: …" from a SweepSpec one
_FIELD_PATH = re.compile(r"(?:sweep|train|model|data|objective|optim|resources|storage|tracking)(?:\.[\w.]+)?")


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Reads, overrides and validates a spec file."""
    source = str(path)
    try:
        with open(path, "rb") as handle:  # bounded read: never slurp a huge file (or /dev/zero)
            raw = handle.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(source, [SpecProblem("", f"spec is larger than {MAX_SPEC_BYTES} bytes")])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(source, [SpecProblem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [SpecProblem("", f"cannot read: {exc.__class__.__name__}")]) from None
    return load_spec_text(text, source, overrides)


def load_spec_text(text: str, source: str = "<spec>", overrides: Iterable[str] = (), *,
                   max_grid_points: int = MAX_GRID_POINTS) -> JobSpec:
    data, lines = parse_yaml(text, source)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_data(data, source, lines, max_grid_points=max_grid_points)


_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter where PyYAML has it


def dump_spec(spec: JobSpec) -> str:
    """The normalised spec as YAML (every default filled in), by libyaml's emitter: the same
    text as the pure-Python one in a quarter of the time (the server dumps each submitted spec)."""
    return yaml.dump(spec.model_dump(mode="json", by_alias=True), Dumper=_SAFE_DUMPER, sort_keys=False)

