"""Loading YAML config files into pydantic models with errors that point at the file.

Every problem is reported as ``file:line:column: field.path: message``, and all
problems of a file are reported at once (validation never stops at the first).

The YAML is composed into nodes first, so each value keeps the position it was
written at; pydantic's error locations are then mapped back to those positions.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from core.durations import parse_duration_s

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _listen(value: str) -> str:
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})", value)
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"must be host:port, such as 127.0.0.1:8080 (got {value!r})")
    return value


# A host:port a listener binds; every component's config uses this one type.
ListenAddr = Annotated[str, AfterValidator(_listen)]


def _networks(value: list[str]) -> list[str]:
    for v in value:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"must be IP addresses or networks, such as 10.0.0.0/8 (got {v!r})") from None
    return value


Networks = Annotated[list[str], AfterValidator(_networks)]
"""Addresses or networks (``10.0.0.0/8``) a listener believes: trusted proxies, identity sources."""


def _duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"must be a duration with a unit, such as '300ms' or '2s' (got {value!r})")
    return parse_duration_s(value)


DurationS = Annotated[float, BeforeValidator(_duration)]
"""A duration written with its unit (``300ms``, ``2s``, ``5m``), in seconds."""


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def mapping_at(data: Any, key: str) -> dict[Any, Any]:
    """``data[key]`` when both are mappings, else empty: for checks on a raw document that
    must run even where other fields are wrong."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def items_of(value: Any) -> list[tuple[Any, Any]]:
    """(key, value) of a mapping or (index, value) of a list; nothing for anything else."""
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        return list(enumerate(value))
    return []


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config file (or files) failed validation; ``problems`` lists every problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Source:
    """A parsed YAML document and where each of its values was written."""

    path: str
    data: Any
    marks: Mapping[Loc, tuple[int, int]]
    key_marks: Mapping[Loc, tuple[int, int]]

    def position(self, loc: Loc) -> tuple[int, int]:
        """Line and column (1-based) of the deepest written value on ``loc``."""
        for n in range(len(loc), -1, -1):
            mark = self.marks.get(tuple(loc[:n]))
            if mark is not None:
                return mark
        return (1, 1)

    def problem(self, loc: Loc, message: str, at_key: bool = False) -> Problem:
        """A problem at ``loc``: its value, or with ``at_key`` the key that names it."""
        key_mark = self.key_marks.get(loc) if at_key else None
        line, column = key_mark or self.position(loc)
        return Problem(self.path, line, column, format_loc(loc), message)


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_Marks = dict[Loc, tuple[int, int]]

MAX_FILE_BYTES = 4 * 1024 * 1024
"""No config of this product is near it; a bigger file is refused before it is parsed."""
MAX_DEPTH = 64
"""Nesting a config may have (the deepest of ours is under 10); past it, refused."""


class _Refused(Exception):
    """A YAML construct a config file may not use, and where."""

    def __init__(self, node_mark: yaml.Mark, message: str) -> None:
        super().__init__(message)
        self.line = node_mark.line + 1
        self.column = node_mark.column + 1
        self.message = message


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader, without aliases and with bounded nesting.

    An alias lets a few lines expand to gigabytes ("billion laughs") or refer to itself;
    config files have no use for them, so ``*name`` is refused where it is written (and so
    is ``<<``, which merges through aliases). Nesting is bounded before the recursive
    composer would exhaust the interpreter's stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(event.start_mark, "aliases (*name) are not supported in config files")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _Refused(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, path: str, many: bool) -> list[yaml.Node | None]:
    loader = _ConfigLoader(text)
    try:
        if many:
            nodes: list[yaml.Node | None] = []
            while loader.check_node():
                nodes.append(loader.get_node())
            return nodes
        return [loader.get_single_node()]
    except _Refused as exc:
        raise ConfigError([Problem(path, exc.line, exc.column, "", exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([Problem(path, line, col, "", f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(path, 1, 1, "", f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()


def _build(node: yaml.Node, loc: Loc, marks: _Marks, key_marks: _Marks, path: str) -> Any:
    marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise ConfigError([Problem(path, line, col, format_loc(loc), "keys must be plain values")])
            if key_node.tag == "tag:yaml.org,2002:merge":
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise ConfigError(
                    [Problem(path, line, col, format_loc(loc), "merge keys (<<) are not supported")]
                )
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if key_node.tag != "tag:yaml.org,2002:str"
                else key_node.value
            )
            if key in out:
                line = key_node.start_mark.line + 1
                col = key_node.start_mark.column + 1
                raise ConfigError([Problem(path, line, col, format_loc((*loc, str(key))), "duplicate key")])
            child: Loc = (*loc, key if isinstance(key, str | int) else str(key))
            key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, marks, key_marks, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), marks, key_marks, path) for i, item in enumerate(node.value)]
    # Scalars: let the safe loader resolve the tag (int, float, bool, null, str).
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value


def parse_yaml(text: str, path: str) -> Source:
    """Parse one YAML document, keeping positions. Raises ConfigError on bad YAML."""
    (node,) = _compose(text, path, many=False)
    if node is None:
        raise ConfigError([Problem(path, 1, 1, "", "file is empty")])
    marks: _Marks = {}
    key_marks: _Marks = {}
    data = _build(node, (), marks, key_marks, path)
    return Source(path, data, marks, key_marks)


def parse_yaml_documents(text: str, path: str) -> list[Source]:
    """Every document of a multi-document YAML stream, keeping positions."""
    nodes = _compose(text, path, many=True)
    out = []
    for node in nodes:
        if node is None:
            continue
        marks: _Marks = {}
        key_marks: _Marks = {}
        out.append(Source(path, _build(node, (), marks, key_marks, path), marks, key_marks))
    return out


def read_text(path: str | Path) -> str:
    """A config file's text: a regular file (not /dev/zero, a FIFO, a directory), at most
    MAX_FILE_BYTES, UTF-8. Raises ConfigError."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError([Problem(name, 1, 1, "", "not a regular file")])
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem(name, 0, 0, "", f"cannot read: {exc.strerror}")]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([Problem(name, 1, 1, "", f"larger than {MAX_FILE_BYTES // 1048576} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(name, 1, 1, "", "not UTF-8 text")]) from exc


def read_yaml(path: str | Path) -> Source:
    return parse_yaml(read_text(path), str(path))


def _clean_message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    return msg


def validate(model: type[M], source: Source) -> M:
    """Validate ``source`` against ``model``; every problem raised at once."""
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        problems = []
        seen = set()
        for err in exc.errors():
            # Drop pydantic's union-branch and function-wrapper names from locations.
            loc: Loc = tuple(
                p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
            )
            problem = source.problem(loc, _clean_message(err), at_key=err["type"] == "extra_forbidden")
            if (problem.field, problem.message) not in seen:
                seen.add((problem.field, problem.message))
                problems.append(problem)
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column))) from None
