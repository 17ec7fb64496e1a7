"""YAML values that reach each config field as the user typed them.

PyYAML reads YAML 1.1, where `off`, `yes` and `no` are booleans, `007` is an octal number and
`2007` an int: fine for a bool or int field, wrong for a text field (`feature_cache: off`, a
domain named `2007`, `label: 1e-3`). Which reading is right depends on the field, and only the
schema knows the field. So loading keeps, for every plain (unquoted) scalar, its source text
beside YAML 1.1's reading (`PlainScalar`), and `resolve_model` settles each one against the
pydantic field it lands in:

- a field that takes text (str, Path, a Literal of strings, or a union with one of those and
  no bool/int/float) gets the text exactly as written;
- a free-form field (Any, e.g. merge hyperparameters) gets the YAML 1.2 core reading, where
  only true/false are booleans and `1e-3` is a float;
- every other field gets YAML 1.1's value, which pydantic's lax mode converts as usual (text
  that YAML 1.1 leaves a string but 1.2 reads as a number, such as `1e-3`, becomes the number).

`null`, `~` and an empty value are None everywhere; quoted scalars are strings from the start.
"""

from __future__ import annotations

import collections.abc
import math
import re
import types
from collections.abc import Callable
from pathlib import PurePath
from typing import Annotated, Any, Literal, Self, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

_YAML_TAG = "tag:yaml.org,2002:"


class PlainScalar(str):
    """An unquoted YAML scalar: its text as written, with YAML 1.1's value in `resolved`."""

    resolved: Any

    def __new__(cls, text: str, resolved: Any) -> Self:
        scalar = super().__new__(cls, text)
        scalar.resolved = resolved
        return scalar

    def __getnewargs__(self) -> tuple[str, Any]:  # type: ignore[override]  # copy/pickle need both parts
        return (str(self), self.resolved)


class TextKeepingLoader(yaml.SafeLoader):
    """SafeLoader whose plain scalars load as PlainScalar (text + YAML 1.1 value)."""


def _keeping_text(construct: Callable[[Any, yaml.Node], Any]) -> Callable[[Any, yaml.Node], Any]:
    def construct_plain(loader: Any, node: yaml.Node) -> Any:
        value = construct(loader, node)
        if isinstance(node, yaml.ScalarNode) and node.style is None:
            return PlainScalar(node.value, value)
        return value

    return construct_plain


# Every tag a plain scalar can resolve to implicitly; `str` too, since YAML 1.1 reads `1e-3`
# as a string where YAML 1.2 reads a float.
for _name in ("null", "bool", "int", "float", "str", "timestamp"):
    _tag = _YAML_TAG + _name
    TextKeepingLoader.add_constructor(_tag, _keeping_text(yaml.SafeLoader.yaml_constructors[_tag]))


def load_yaml(text: str) -> Any:
    """Parse YAML `text` like yaml.safe_load, but with every plain scalar a PlainScalar."""
    return yaml.load(text, Loader=TextKeepingLoader)  # a SafeLoader subclass: no arbitrary objects


# --- YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution)
_CORE_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_CORE_INT = re.compile(r"[-+]?[0-9]+")
_CORE_OCT = re.compile(r"0o[0-7]+")
_CORE_HEX = re.compile(r"0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_CORE_INF = re.compile(r"([-+]?)\.(inf|Inf|INF)")
_CORE_NAN = re.compile(r"\.(nan|NaN|NAN)")


def core_value(text: str) -> Any:
    """`text` read as a plain scalar of the YAML 1.2 core schema (null, bool, int, float or str)."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in _CORE_BOOLS:
        return _CORE_BOOLS[text]
    if _CORE_INT.fullmatch(text):
        return int(text)
    if _CORE_OCT.fullmatch(text) or _CORE_HEX.fullmatch(text):
        return int(text, 0)  # the 0o / 0x prefix sets the base
    if _CORE_FLOAT.fullmatch(text):
        return float(text)
    if match := _CORE_INF.fullmatch(text):
        return -math.inf if match.group(1) == "-" else math.inf
    if _CORE_NAN.fullmatch(text):
        return math.nan
    return text


# --- settling values against field types
_NUMBERS = (bool, int, float)


def _strip(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> tuple[Any, ...]:
    annotation = _strip(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(_strip(a) for a in get_args(annotation))
    return (annotation,)


def _is_text(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, (str, PurePath))  # str enums too


def _is_number(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return any(isinstance(arg, _NUMBERS) for arg in get_args(annotation))
    return annotation in _NUMBERS


def _is_free(annotation: Any) -> bool:
    return annotation is Any or annotation is object or isinstance(annotation, TypeVar)


def admits_text(annotation: Any) -> bool:
    """Whether a field of type `annotation` takes text and no number or boolean."""
    members = _members(annotation)
    return any(_is_text(m) for m in members) and not any(_is_number(m) for m in members)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    return next((m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)), None)


def _mapping_in(annotation: Any) -> tuple[Any, Any] | None:
    for member in _members(annotation):
        origin = get_origin(member)
        if member in (dict, collections.abc.Mapping) or origin in (dict, collections.abc.Mapping):
            args = get_args(member)
            return (args[0], args[1]) if len(args) == 2 else (Any, Any)
    return None


def _sequence_items(annotation: Any, length: int) -> list[Any] | None:
    for member in _members(annotation):
        origin = get_origin(member) or member
        args = get_args(member)
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return [args[0]] * length
            return [args[i] if i < len(args) else Any for i in range(length)] if args else [Any] * length
        if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.Set):
            return [args[0] if args else Any] * length
    return None


def resolve_for(annotation: Any, value: Any) -> Any:
    """`value` (as load_yaml returns it) with every PlainScalar settled for a field of type `annotation`.

    Values that are not PlainScalar (quoted strings, Python values set by code) pass unchanged.
    """
    if isinstance(value, dict):
        model = _model_in(annotation)
        if model is not None:
            return resolve_model(model, value)
        key_type, value_type = _mapping_in(annotation) or (Any, Any)
        return {resolve_for(key_type, k): resolve_for(value_type, v) for k, v in value.items()}
    if isinstance(value, list):
        items = _sequence_items(annotation, len(value)) or [Any] * len(value)
        return [resolve_for(item, v) for item, v in zip(items, value)]
    if not isinstance(value, PlainScalar):
        return value
    if value.resolved is None:  # null, ~ or nothing: None in YAML 1.1 and 1.2 alike
        return None
    if admits_text(annotation):
        return str(value)
    if _is_free(_strip(annotation)) or isinstance(value.resolved, str):
        # Free-form: YAML 1.2. Typed: YAML 1.1's value, but text that 1.1 leaves a string and
        # 1.2 reads as a number (1e-3, 0o17) becomes that number.
        return core_value(str(value))
    return value.resolved


def resolve_model(model: type[BaseModel], raw: dict[Any, Any]) -> dict[str, Any]:
    """The mapping `raw` with each value settled for `model`'s field of that name.

    Keys that are not fields keep their text (pydantic then reports them by name) and their
    values get the YAML 1.2 core reading.
    """
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[name] = info.annotation
        if info.alias:
            fields[info.alias] = info.annotation
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key) if isinstance(key, PlainScalar) else key
        out[name] = resolve_for(fields.get(name, Any) if isinstance(name, str) else Any, value)
    return out


def annotation_at(model: type[BaseModel], dotted: str) -> Any:
    """The type of the field at a dotted path (`train.lr` -> float); Any once the path leaves the schema."""
    annotation: Any = model
    for part in dotted.split("."):
        target = _model_in(annotation)
        if target is not None:
            info = target.model_fields.get(part)
            if info is None:
                return Any
            annotation = info.annotation
            continue
        mapping = _mapping_in(annotation)
        if mapping is None:
            return Any
        annotation = mapping[1]
    return annotation


__all__ = [
    "PlainScalar", "TextKeepingLoader", "admits_text", "annotation_at", "core_value", "load_yaml",
    "resolve_for", "resolve_model",
]
