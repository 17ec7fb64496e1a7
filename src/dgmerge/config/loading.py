"""From YAML files and `--set key=value` overrides to a validated ExperimentConfig.

Files and overrides are parsed keeping each plain scalar's text (config/yaml_values.py), so a
value reaches its field as typed: `feature_cache: off` is the text "off", `sae: off` is False.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dgmerge.config.base import ConfigError
from dgmerge.config.experiment import METHODS_CONTEXT, ExperimentConfig
from dgmerge.config.yaml_values import load_yaml, resolve_model

# The YAML files shipped with dgmerge (src/dgmerge/configs/), loadable by name.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(name_or_path: Path | str) -> Path:
    """A config file path, or the name of a config shipped with dgmerge (e.g. pacs_mobilenetv2)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SHIPPED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"no config file {path} (shipped configs: {names})")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError naming the file otherwise.

    Plain scalars come back as `PlainScalar` (a str keeping YAML 1.1's value beside the text);
    `validate_config` settles them field by field.
    """
    try:
        raw = load_yaml(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields, got {type(raw).__name__}")
    return raw


def load_config(path: Path, overrides: dict[str, Any] | None = None, *,
                methods: Collection[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply dotted overrides, and validate it.

    methods: the registered experiment-method names; when given, the config's methods must be
    among them. Raises ConfigError naming the file and every bad field, before any work is done.
    """
    path = resolve_config_path(path)
    raw = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return validate_config(raw, source=str(path), methods=methods)


def validate_config(raw: dict[str, Any], source: str = "config", *,
                    methods: Collection[str] | None = None) -> ExperimentConfig:
    """Validate a plain dict as an ExperimentConfig, with field names in the error.

    Values read from YAML (PlainScalar) are settled against their fields first; methods: as
    in load_config.
    """
    context = {METHODS_CONTEXT: methods} if methods is not None else None
    try:
        return ExperimentConfig.model_validate(resolve_model(ExperimentConfig, raw), context=context)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid config: {problems}") from exc


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['train.lr=1e-4', 'seeds=[0,1]'] into {'train.lr': '1e-4', 'seeds': ['0', '1']}.

    Values are YAML whose plain scalars keep their text (PlainScalar): validate_config gives
    each field the text or the typed value, as for a YAML file.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. train.lr=1e-4)")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {pair!r}: the value is not valid YAML: {exc}") from exc
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set raw["a"]["b"] = value for dotted="a.b", creating sections as needed."""
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


__all__ = [
    "SHIPPED_CONFIGS", "load_config", "parse_overrides", "read_yaml_mapping", "resolve_config_path", "set_dotted",
    "validate_config",
]
