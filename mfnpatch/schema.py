"""Typed, versioned files on disk: YAML/JSON loaded into pydantic models with file:line:column errors.

Every on-disk format (pin manifests, patch-set manifests, recipes, run records) is a pydantic model
with ``schema: 1``. Validation errors point at the offending key, e.g.::

    recipes/may16.yaml:12:5: unknown key 'comand' (did you mean 'command'?)
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import TooLarge, read_bounded

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for on-disk models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SchemaError(MfnError):
    """A file that does not match its schema; the message starts with file:line:col."""


# Limits of every file mfnpatch reads as YAML or JSON (recipes, patch sets, pins, env specs, run records, states)
MAX_BYTES = 8 << 20
MAX_DEPTH = 64
MAX_NUMBER = 64  # digits (and signs, points, exponents) of one number


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one) and keys that are not plain
    values."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        m = key_node.start_mark
        where = f"{loader.name}:{m.line + 1}:{m.column + 1}"
        if not isinstance(key_node, yaml.ScalarNode):
            raise SchemaError(f"{where}: a mapping key must be a plain value, not a {key_node.id}",
                              hint="write keys as names (stages: {softmax: ...})")  # fmt: skip
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SchemaError(
                f"{where}: duplicate key '{key}' (first at line {seen[key].start_mark.line + 1})",
                hint="remove one of the two entries",
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_NUMBER = re.compile(r"[-+]?(\.?[0-9])[0-9_.eE+-]*")


def _check_events(text: str, path: Path) -> None:
    """Before anything is built: no alias (a billion laughs is a few aliases deep), nesting at most MAX_DEPTH,
    no number longer than MAX_NUMBER characters. PyYAML's event stream is read without recursion."""
    depth = 0
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_event():
            ev = loader.get_event()
            m = ev.start_mark
            where = f"{path}:{m.line + 1}:{m.column + 1}" if m else str(path)
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise SchemaError(f"{where}: YAML anchors and aliases are not read here",
                                  hint="write the value out where it is used")  # fmt: skip
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SchemaError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(ev, yaml.ScalarEvent) and ev.style is None and len(ev.value) > MAX_NUMBER:
                if _NUMBER.fullmatch(ev.value):
                    raise SchemaError(f"{where}: a number of {len(ev.value)} characters (at most {MAX_NUMBER})")
    finally:
        loader.dispose()


def load_yaml(path: Path, text: str | None = None) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file within the limits (size, depth, number length, no aliases); return (data, node tree)
    so errors can be located later."""
    path = Path(path)
    if text is None:
        text = read_text(path)
    if len(text) > MAX_BYTES:
        raise SchemaError(f"{path}: {len(text)} characters, more than the {MAX_BYTES} read here")
    try:
        _check_events(text, path)
        loader = _Loader(text)
        loader.name = str(path)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SchemaError(f"{where}: invalid YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise SchemaError(f"{path}: invalid YAML: {type(e).__name__}: {str(e)[:200]}") from None
    return data, node


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    """A file of ours as UTF-8 text, within the size limit; a clear error for what is not such a file (a FIFO is
    refused, never waited on)."""
    path = Path(path)
    try:
        data = read_bounded(path, "", limit)
    except TooLarge:
        raise SchemaError(f"{path}: more than {limit} bytes, more than a file of this kind holds") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _too_deep(text: str, max_depth: int) -> int | None:
    """The offset at which ``text`` nests deeper than ``max_depth`` (strings skipped), or None."""
    depth = 0
    in_str = esc = False
    for i, c in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            if depth > max_depth:
                return i
        elif c in "]}":
            depth -= 1
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def load_json(path: Path, limit: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON file of ours within the limits (size, depth; no NaN or Infinity); errors name the file."""
    path = Path(path)
    text = read_text(path, limit)
    if not text.strip():
        raise SchemaError(f"{path}: empty (no JSON in it)")
    at = _too_deep(text, max_depth)
    if at is not None:
        raise SchemaError(f"{path}: nested more than {max_depth} levels deep (at character {at})")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise SchemaError(f"{path}: not JSON: {str(e)[:200]}") from None


def locate(node: yaml.Node | None, loc: tuple) -> tuple[int, int, bool]:
    """Line and column (1-based) of the deepest node on ``loc``; third item: found exactly."""
    if node is None:
        return 1, 1, False
    cur = node
    exact = True
    for part in loc:
        nxt = None
        if isinstance(cur, yaml.MappingNode) and isinstance(part, str):
            for k, v in cur.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    nxt = v
                    break
        elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(cur.value):
                nxt = cur.value[part]
        if nxt is None:
            if isinstance(part, str) and not isinstance(cur, yaml.MappingNode | yaml.SequenceNode):
                continue
            exact = False
            break
        cur = nxt
    return cur.start_mark.line + 1, cur.start_mark.column + 1, exact


def key_location(node: yaml.Node | None, loc: tuple) -> tuple[int, int]:
    """Location of a mapping *key* (for unknown-key errors), falling back to its value."""
    if node is None or not loc:
        return 1, 1
    *parent, last = loc
    line, col, exact = locate(node, tuple(parent))
    cur = node
    for part in parent:
        found = None
        if isinstance(cur, yaml.MappingNode):
            for k, v in cur.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    found = v
        elif isinstance(cur, yaml.SequenceNode) and isinstance(part, int) and part < len(cur.value):
            found = cur.value[part]
        if found is None:
            return line, col
        cur = found
    if isinstance(cur, yaml.MappingNode):
        for k, _ in cur.value:
            if isinstance(k, yaml.ScalarNode) and k.value == last:
                return k.start_mark.line + 1, k.start_mark.column + 1
    return line, col


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Known field names of the (sub)model that holds ``loc`` (for did-you-mean hints)."""
    cur: Any = model
    for part in loc:
        if isinstance(cur, _Item):
            cur = cur.model  # this part is a dict key or list index: next come the item model's fields
            continue
        fields = getattr(cur, "model_fields", None)
        if fields is None:
            return []
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return []
        cur = _inner_model(field.annotation)
        if cur is None:
            return []
        if typing.get_origin(field.annotation) in (dict, list) or _container(field.annotation):
            cur = _Item(cur)
    fields = getattr(cur, "model_fields", None) if not isinstance(cur, _Item) else None
    if not fields:
        return []
    return [f.alias or name for name, f in fields.items()]


class _Item:
    """Marks 'the next loc part is a key or index of a container of this model'."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        raise AttributeError(name)


def _container(ann: Any) -> bool:
    return any(typing.get_origin(a) in (dict, list) for a in getattr(ann, "__args__", ()) or ())


def _inner_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


def _model_names() -> set[str]:
    out, todo = set(), [BaseModel]
    while todo:
        c = todo.pop()
        for sub in c.__subclasses__():
            if sub.__name__ not in out:
                out.add(sub.__name__)
                todo.append(sub)
    return out


def _clean_loc(loc: tuple) -> tuple:
    """Drop what pydantic adds to loc for unions and validators ('function-after[...]', 'Param', 'str')."""
    names = _model_names()
    return tuple(
        p for p in loc
        if isinstance(p, int) or not ("[" in p or p.startswith("-") or p in _TYPE_TAGS or p in names)
    )  # fmt: skip


def validation_message(path: Path, err: ValidationError, node: yaml.Node | None, model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = _clean_loc(tuple(e["loc"]))
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = e["type"]
    if kind == "extra_forbidden":
        line, col = key_location(node, loc)
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known else "")
        return f"{path}:{line}:{col}: unknown key '{dotted}'{tip}"
    if kind == "missing":
        line, col, _ = locate(node, loc[:-1])
        return f"{path}:{line}:{col}: missing key '{dotted}'"
    line, col, _ = locate(node, loc)
    msg = e["msg"].removeprefix("Value error, ")  # our validators' messages speak for themselves
    value = e.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"{path}:{line}:{col}: {dotted}: {msg}{shown}"


def validate(model: type[M], data: Any, path: Path, node: yaml.Node | None = None, hint: str | None = None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SchemaError(validation_message(Path(path), err, node, model), hint=hint) from None


def load_model(path: Path, model: type[M], hint: str | None = None) -> M:
    data, node = load_yaml(path)
    if data is None:
        raise SchemaError(f"{path}:1:1: empty file", hint=hint)
    return validate(model, data, path, node, hint=hint)
