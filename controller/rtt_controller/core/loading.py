"""Loading: desired-state and policy files (path + bytes) into validated, frozen values.

Pure: the caller (a source seam: git tree or directory) hands in bytes. Every problem becomes a
`Finding` that points into the file by a structural location; `locate` turns those into line
numbers only when they are reported, so the fast path never builds a YAML node tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Generic, TypeVar

import pydantic
import yaml

from rtt_controller.core import model
from rtt_controller.core.diagnostics import Diagnostic, Rule

MAX_FILE_BYTES = 4 * 1024 * 1024
SYMBOLS_DIR = "desired/symbols/"
ROUTES_DIR = "desired/routes/"
POLICIES_DIR = "policies/"
YAML_SUFFIXES = (".yaml", ".yml")

Loc = tuple[str | int, ...]
T = TypeVar("T")

_Base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader, refusing duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """A problem at a structural location in a file; `locate` resolves it to a line."""

    path: str
    loc: Loc
    rule: Rule
    message: str
    line: int | None = None  # known already for syntax and encoding errors


@dataclasses.dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A validated list entry and where it came from (`loc` is (top key, index))."""

    value: T
    path: str
    loc: Loc


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedFile:
    """What one file contributed. Cached by (path, blob id) by the source seams."""

    path: str
    symbols: tuple[Entry[model.Symbol], ...] = ()
    routes: tuple[Entry[model.Route], ...] = ()
    policy: tuple[tuple[str, Any], ...] = ()  # (top-level key, validated value)
    findings: tuple[Finding, ...] = ()


def is_state_file(path: str) -> bool:
    return path.endswith(YAML_SUFFIXES) and path.startswith((SYMBOLS_DIR, ROUTES_DIR, POLICIES_DIR))


def parse_file(path: str, data: bytes) -> ParsedFile:
    """Parse and validate one file. Never raises for bad content."""
    return validate(path, read(path, data))


def validate(path: str, document: Any) -> ParsedFile:
    """Validate a document returned by `read` (a failed `ParsedFile` passes through)."""
    if isinstance(document, ParsedFile):
        return document
    if path.startswith(SYMBOLS_DIR):
        symbols, findings = _entries(path, document, "symbols", model.Symbol)
        return ParsedFile(path=path, symbols=symbols, findings=findings)
    if path.startswith(ROUTES_DIR):
        routes, findings = _entries(path, document, "routes", model.Route)
        return ParsedFile(path=path, routes=routes, findings=findings)
    return _policy(path, document)


def read(path: str, data: bytes) -> Any:
    """The YAML document in `data`, or a failed ParsedFile for size, encoding or syntax.

    Split from `validate` so a source seam can run this, the costly half, in worker processes.
    """
    if len(data) > MAX_FILE_BYTES:
        return _fail(path, Rule.FILE_TOO_LARGE,
                     f"file is {len(data)} bytes; the limit is {MAX_FILE_BYTES}", 1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return _fail(path, Rule.NOT_UTF8, f"byte 0x{data[exc.start]:02x} is not valid UTF-8", line)
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return _fail(path, Rule.YAML_SYNTAX, str(problem), line)
    except RecursionError:
        return _fail(path, Rule.YAML_SYNTAX, "document nests too deeply", 1)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp like 2001-02-30
        return _fail(path, Rule.YAML_SYNTAX, f"a value cannot be read: {exc}", 1)
    return document


def _fail(path: str, rule: Rule, message: str, line: int) -> ParsedFile:
    return ParsedFile(path=path, findings=(Finding(path, (), rule, message, line),))


def _entries(path: str, document: Any, key: str, cls: type[T]
             ) -> tuple[tuple[Entry[T], ...], tuple[Finding, ...]]:
    if not isinstance(document, Mapping) or key not in document:
        return (), (Finding(path, (), Rule.MISSING_FIELD, f"expected a mapping with `{key}:`"),)
    findings = [Finding(path, (k,), Rule.UNKNOWN_FIELD, f"unknown top-level key {k!r}")
                for k in document if k != key]
    items = document[key]
    if not isinstance(items, list):
        findings.append(Finding(path, (key,), Rule.SCHEMA, f"`{key}` must be a list"))
        return (), tuple(findings)
    entries = []
    validator = _ENTRY_ADAPTERS[cls]
    for index, item in enumerate(items):
        try:
            value = validator.validate_python(item)
        except pydantic.ValidationError as exc:
            findings.extend(_from_pydantic(path, (key, index), exc))
            continue
        entries.append(Entry(value=value, path=path, loc=(key, index)))
    return tuple(entries), tuple(findings)


_ENTRY_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {
    model.Symbol: pydantic.TypeAdapter(model.Symbol),
    model.Route: pydantic.TypeAdapter(model.Route),
}
# Each section validates alone, with its field's constraints (kept in `metadata`, not in the
# bare annotation), so a file holding some sections is checked exactly as the merged Policy is.
def _section_type(field: Any) -> Any:
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


_POLICY_ADAPTERS: dict[str, pydantic.TypeAdapter[Any]] = {
    name: pydantic.TypeAdapter(_section_type(field))
    for name, field in model.Policy.model_fields.items()
}


def _policy(path: str, document: Any) -> ParsedFile:
    if document is None:
        return ParsedFile(path=path)
    if not isinstance(document, Mapping):
        return ParsedFile(path=path, findings=(
            Finding(path, (), Rule.SCHEMA, "a policy file is a mapping of policy sections"),))
    parts, findings = [], []
    for key, value in document.items():
        adapter = _POLICY_ADAPTERS.get(key) if isinstance(key, str) else None
        if adapter is None:
            findings.append(Finding(path, (str(key),), Rule.UNKNOWN_FIELD,
                                    f"unknown policy section {key!r}; known: "
                                    + ", ".join(model.POLICY_KEYS)))
            continue
        try:
            parts.append((key, adapter.validate_python(value)))
        except pydantic.ValidationError as exc:
            findings.extend(_from_pydantic(path, (key,), exc))
    return ParsedFile(path=path, policy=tuple(parts), findings=tuple(findings))


_RULE_BY_ERROR = {
    "extra_forbidden": Rule.UNKNOWN_FIELD,
    "missing": Rule.MISSING_FIELD,
    "bad_saddr": Rule.BAD_SADDR,
    "bad_version": Rule.BAD_VERSION,
}


def _from_pydantic(path: str, prefix: Loc, exc: pydantic.ValidationError) -> list[Finding]:
    findings: list[Finding] = []
    seen: set[tuple[Loc, Rule]] = set()
    for error in exc.errors(include_url=False):
        # pydantic names union branches in `loc` ("tuple[function-after[...]]"); they are no
        # place in the file, so drop them, and report each place and rule once.
        loc = prefix + tuple(p for p in error["loc"] if isinstance(p, int) or "[" not in p)
        rule = _RULE_BY_ERROR.get(error["type"], Rule.SCHEMA)
        field = ".".join(str(part) for part in loc)
        if rule is Rule.UNKNOWN_FIELD:
            message = f"unknown field `{field}`"
        elif rule is Rule.MISSING_FIELD:
            message = f"missing field `{field}`"
        else:
            message = f"`{field}`: {error['msg']}"
        if (loc, rule) not in seen:
            seen.add((loc, rule))
            findings.append(Finding(path, loc, rule, message))
    # When one union branch failed deeper than another, the deeper error is the one that says
    # what is wrong ("item 2 is not a version" rather than "not a string").
    return [f for f in findings
            if not any(len(g.loc) > len(f.loc) and g.loc[:len(f.loc)] == f.loc for g in findings)]


# --- locating -------------------------------------------------------------------------------


def locate(findings: Iterable[Finding], files: Mapping[str, bytes]) -> list[Diagnostic]:
    """Resolve findings to `path:line` diagnostics, composing each file's YAML at most once."""
    trees: dict[str, Any] = {}
    out = []
    for f in findings:
        line = f.line
        if line is None:
            if f.path not in trees:
                trees[f.path] = _compose(files.get(f.path, b""))
            line = _line_of(trees[f.path], f.loc)
        out.append(Diagnostic(f.path, line, f.rule, f.message))
    return sorted(out)


def _compose(data: bytes) -> Any:
    try:
        return yaml.compose(data.decode("utf-8"), Loader=_Loader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None


def _line_of(node: Any, loc: Sequence[str | int]) -> int:
    """The line of the deepest node along `loc`; 1 when the file has no usable tree."""
    if node is None:
        return 1
    line: int = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            # A missing field reports at its parent; an unknown field at its key.
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line, child = key_node.start_mark.line + 1, value_node
                    break
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and 0 <= part < len(node.value)):
            child = node.value[part]
        if child is None:
            break
        # A mapping value that is a scalar reports at its key; anything else at its own line.
        if not isinstance(child, yaml.ScalarNode) or isinstance(node, yaml.SequenceNode):
            line = child.start_mark.line + 1
        node = child
    return line
