"""The one typed config reader: a YAML file (or a dict) -> a dataclass, with dotted overrides.

Every config in ``configs/`` goes through here: model YAMLs (:class:`llasm.builder.ModelSpec`), stage
YAMLs (:class:`llasm.training.config.TrainConfig`), vocoder YAMLs and the warm start's
:class:`llasm.training.align.AlignConfig`. The rules are the same everywhere:

* a key the dataclass does not have is an error that names the key's path and the file;
* a nested dataclass field reads a nested mapping (``train: {lr: 1e-4}``);
* YAML 1.1 reads ``1e-4`` as a string: strings are converted to the field's declared int/float/bool;
* overrides are ``dotted.key=value`` (value parsed as YAML); a number selects a list element
  (``data.sources.0.path=x.jsonl``; the index one past the end appends).

Design follows torchtune's / LitGPT's typed configs with command-line overrides (STYLE 6).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Sequence, TypeVar

import yaml

from llasm.io import load_yaml

T = TypeVar("T")


def parse_value(text: str) -> Any:
    """An override's value as YAML would read it (``1e-4`` stays a string; the field type converts it)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict, overrides: Sequence[str] = (), where: str = "overrides") -> dict:
    """A deep copy of ``data`` with every ``dotted.key=value`` of ``overrides`` set (see :func:`set_dotted`).

    Raises ``ValueError`` naming the override and ``where`` when it is not ``key=value``, an index is
    out of range, or a path runs through a value that is neither a mapping nor a list.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: override {item!r} is not key=value")
        set_dotted(data, key, parse_value(text), where, item)
    return data


def set_dotted(data: dict, key: str, value: Any, where: str = "overrides", item: str | None = None) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, in place. Missing sections are created; a
    number selects a list element (one past the end appends)."""
    item = item or f"{key}={value!r}"
    *parents, leaf = key.split(".")
    node: Any = data
    for depth, part in enumerate(parents):
        node = _child(node, part, item, where)
        if not isinstance(node, (dict, list)):
            path = ".".join(parents[: depth + 1])
            raise ValueError(f"{where}: override {item!r}: {path} is a {type(node).__name__}, not a section or list")
    if isinstance(node, list):
        index = _index(node, leaf, item, where)
        node[index:index + 1] = [value]
    else:
        node[leaf] = value


def _child(node, part: str, item: str, where: str):
    if isinstance(node, list):
        index = _index(node, part, item, where)
        if index == len(node):
            node.append({})
        return node[index]
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list, part: str, item: str, where: str) -> int:
    if not part.isdigit() or int(part) > len(node):
        raise ValueError(f"{where}: override {item!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def did_you_mean(key: str, known, prefix: str = "") -> str:
    """``"; did you mean 'PREFIX+NEAREST'?"`` for the known key nearest ``key`` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def from_dict(cls: type[T], data: dict | None, where: str = "<dict>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` (a file name) and ``prefix`` (the key path so
    far) name the place in errors. Raises ``ValueError`` for an unknown key or an unreadable value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown config key '{prefix}{key}'{did_you_mean(key, fields, prefix)}; "
                             f"known: {sorted(fields)}")
        nested = _dataclass_of(hints[key])
        if nested is not None and isinstance(value, dict):
            kwargs[key] = from_dict(nested, value, where, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], where, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from None


def load(cls: type[T], source: str | os.PathLike | dict, overrides: Sequence[str] = (),
         section: str | None = None, where: str | None = None) -> T:
    """A YAML file (``${ENV}`` expanded) or a dict, plus ``overrides``, as dataclass ``cls``.

    ``section`` reads one top-level key of the file (``vocoder:``) instead of the whole file;
    ``where`` names a dict's origin in errors (a file's own name is used otherwise).
    """
    if isinstance(source, (str, os.PathLike)):
        where, data = where or str(source), load_yaml(source)
    else:
        where, data = where or "<dict>", source
    def read(d: dict, origin: str) -> T:
        return from_dict(cls, d.get(section), origin, f"{section}.") if section is not None else from_dict(cls, d, origin)

    if not overrides:
        return read(data, where)
    read(data, where)  # the file's own mistakes name the file, the overrides' name the overrides
    return read(apply_overrides(data, overrides, where), f"the overrides ({' '.join(overrides)}) of {where}")


def load_sections(path: str | os.PathLike, sections: dict[str, type], overrides: Sequence[str] = (),
                  bare: bool = False) -> tuple:
    """A YAML file of several top-level sections (``vocoder:`` + ``train:``), each a dataclass, plus
    dotted ``overrides`` (``train.max_steps=100``): one instance per section, in ``sections``' order.

    ``bare``: an override without a section (``max_steps=100``) goes to the one section with that
    field; otherwise it is an unknown top-level key. Raises ``ValueError`` for an unknown top-level key
    (with the nearest section) or any error of :func:`from_dict`; the file's own mistakes name the file,
    the overrides' name the overrides.
    """
    def read(data: dict, where: str) -> tuple:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of the sections {sorted(sections)}, got {type(data).__name__}")
        stray = sorted(set(data) - set(sections))  # after the overrides: a bare `max_steps=2` is a stray key too
        if stray:  # the nearest section, or the nearest field as SECTION.FIELD (a bare key missing its section)
            close = difflib.get_close_matches(str(stray[0]), [*sections, *owner], n=1)
            section = f"{owner[close[0]]}." if close and close[0] in owner else ""
            hint = f"; did you mean '{section}{close[0]}'?" if close else ""
            raise ValueError(f"{where}: unknown top-level key(s) {stray}{hint} (the sections are {sorted(sections)})")
        for name, cls in sections.items():  # a key under the wrong section: name the section that has it
            part = data.get(name)
            known = {f.name for f in dataclasses.fields(cls)}
            for key in part if isinstance(part, dict) else ():
                if key not in known and key in owner and owner[key] != name:
                    raise ValueError(f"{where}: unknown config key '{name}.{key}'; it belongs to the "
                                     f"'{owner[key]}' section: did you mean '{owner[key]}.{key}'?")
        return tuple(from_dict(cls, data.get(name), where, f"{name}.") for name, cls in sections.items())

    owner = {f.name: name for name, cls in sections.items() for f in dataclasses.fields(cls) if f.name not in sections}
    data = load_yaml(path)
    configs = read(data, str(path))
    if not overrides:
        return configs
    qualified = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if bare and sep and "." not in key:
            owners = [name for name, cls in sections.items() if key in {f.name for f in dataclasses.fields(cls)}]
            item = f"{owners[0]}.{item}" if len(owners) == 1 else item
        qualified.append(item)
    return read(apply_overrides(data, qualified, str(path)), f"the overrides ({' '.join(overrides)}) of {path}")


def to_dict(obj) -> dict:
    """A dataclass as plain dicts and lists (what :func:`from_dict` reads back)."""
    return dataclasses.asdict(obj)


def _dataclass_of(hint) -> type | None:
    """The dataclass a field holds (``X`` or ``X | None``), else ``None``."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if _is_union(hint) else [hint]
    found = [t for t in kinds if dataclasses.is_dataclass(t)]
    return found[0] if found else None


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """YAML reads ``1e-4`` as a string: convert strings to the field's declared int/float/bool."""
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if _is_union(hint) else [hint]
    if value is None or not isinstance(value, str) or str in kinds or Any in kinds:
        return value
    for kind in (int, float, bool):
        if kind in kinds:
            if kind is bool:
                if value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    return value.lower() in ("1", "true", "yes", "on")
                continue
            try:
                return kind(value)
            except ValueError:
                continue
    raise ValueError(f"{where}: config key '{key}': cannot read {value!r} as {_name(hint)}")


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def flatten(data, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}, "data": {"sources": [{"path": p}]}}`` -> ``{"train.lr": 1, "data.sources[0].path": p}``."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out if out or not prefix else {prefix: data}
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def config_changes(before: dict, after: dict, free: tuple[str, ...] = ()) -> list[str]:
    """What differs between two resolved configs, as ``key: old -> new`` lines (keys starting with one
    of ``free``, e.g. those that may change on a resume, are left out)."""
    old, new = flatten(before), flatten(after)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(free) or old.get(key) == new.get(key):
            continue
        changes.append(f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}")
    return changes
