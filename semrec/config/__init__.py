"""Job settings: one pydantic-settings model per job.

Precedence (highest first): CLI flags (``--quantizer.levels 4``), ``SEMREC_*`` environment
variables (``SEMREC_QUANTIZER__LEVELS=4``), the TOML file given with ``--config`` (or, without the
flag, ``SEMREC_CONFIG``), defaults. A ``config`` key inside a TOML file is refused (files do not nest).
Validation errors name the field (``quantizer.levels``) and the value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
import typing
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource, TomlConfigSettingsSource

from semrec.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


def format_validation_error(e: ValidationError, source: str = "settings") -> str:
    lines = [f"invalid {source}:"]
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"  {loc}: {err['msg']}{got}")
    return "\n".join(lines)


def load_settings(cls: type[S], argv: list[str] | None = None, prog: str | None = None) -> S:
    """Build ``cls`` from CLI args, environment and an optional ``--config`` TOML file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    env_config = os.environ.get("SEMREC_CONFIG") or None
    toml_path = known.config or (Path(env_config) if env_config else None)
    if toml_path is not None:
        origin = "--config" if known.config else "SEMREC_CONFIG"
        if not toml_path.is_file():
            raise ConfigError(f"config file not found: {toml_path} (from {origin})")
        try:
            data = tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{toml_path}: invalid TOML ({e})") from None
        if "config" in data:
            raise ConfigError(f"{toml_path}: 'config' cannot be set inside a config file (files do not nest); "
                              f"give one file with --config or SEMREC_CONFIG")

    class _Loaded(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def settings_customise_sources(cls_, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            sources = [init_settings,
                       CliSettingsSource(settings_cls, cli_parse_args=argv, cli_prog_name=prog,
                                         cli_implicit_flags=True, cli_exit_on_error=True),
                       env_settings]
            if toml_path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
            return tuple(sources)

    _Loaded.__name__ = cls.__name__
    _Loaded.__doc__ = cls.__doc__
    try:
        loaded = _Loaded()
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{cls.__name__} ({toml_path or 'CLI/environment'})")) from None
    return loaded


def _has_path(annotation) -> bool:
    return annotation is Path or any(_has_path(a) for a in typing.get_args(annotation))


def path_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every path-valued setting of ``cls`` (``items``, ``encoder.model_path``, ...)."""
    names = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += path_fields(ann, f"{prefix}{name}.")
        elif _has_path(ann):
            names.append(prefix + name)
    return names


def path_values(settings: BaseModel) -> dict[str, list[Path]]:
    """Every path-valued setting with its value(s) (unset ones left out)."""
    out = {}
    for name in path_fields(type(settings)):
        v: object = settings
        for part in name.split("."):
            v = getattr(v, part)
        vals = [v] if isinstance(v, Path) else list(v or [])
        if vals:
            out[name] = vals
    return out


def write_effective(settings: BaseSettings, path: Path) -> None:
    path.write_text(json.dumps(json.loads(settings.model_dump_json()), indent=2, sort_keys=True) + "\n")
