"""Frozen settings objects read once at an entry point, from env (`FEDMOE_*`) and CLI flags.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`, which
records the environment variable and help text. `load_settings` builds one from an explicit
environment mapping and overrides; nothing here reads `os.environ` by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from fedmoe.errors import SettingsError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(env: str, default: Any, help: str, *, secret: bool = False) -> Any:
    """Declare a settings field read from environment variable `env`.

    A `secret` one (a password) is read from the environment only: it gets no CLI flag
    (argv is visible to every user of the machine) and stays out of the settings' repr.
    """
    return dataclasses.field(
        default=default, repr=not secret, metadata={"env": env, "help": help, "secret": secret}
    )


def _convert(name: str, kind: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot read {raw!r} as {kind.__name__}") from exc
    return raw


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "env" in f.metadata]


def env_names(cls: type[Any]) -> set[str]:
    """Every environment variable a settings class reads."""
    return {f.metadata["env"] for f, _ in _fields(cls)}


def load_settings(cls: type[T], environ: Mapping[str, str], **overrides: Any) -> T:
    """Build `cls` from `environ`, then apply non-None `overrides` (e.g. CLI flags)."""
    values: dict[str, Any] = {}
    for f, kind in _fields(cls):
        raw: Any = environ.get(f.metadata["env"])
        if overrides.get(f.name) is not None:
            raw = overrides[f.name]
        if raw is not None:
            values[f.name] = _convert(f.metadata["env"], kind, raw)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{cls.__name__}: {exc}") from exc


class _RefuseSecret(argparse.Action):
    """A secret given as a flag: an error that names the safe ways (and not the value)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        env = option_string.lstrip("-").upper().replace("-", "_") if option_string else ""
        parser.error(
            f"{option_string}: secrets are never taken from the command line; set "
            f"FEDMOE_{env} in the environment or use FEDMOE_{env}_FILE"
        )


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one `--flag` per settings field; the help names its env variable and default."""
    for f, kind in _fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("secret"):
            # Environment only: argv is visible to every user of the machine. The flag exists
            # only to refuse it (else argparse would take it as an abbreviation of another).
            parser.add_argument(
                flag, dest=f"_refused_{f.name}", action=_RefuseSecret, help=argparse.SUPPRESS
            )
            continue
        env = f.metadata["env"]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{f.metadata['help']} (env {env}; default {default!r})"
        if kind is bool:
            parser.add_argument(
                flag, dest=f.name, default=None, help=text, action=argparse.BooleanOptionalAction
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text)


def from_args(cls: type[T], args: argparse.Namespace, environ: Mapping[str, str]) -> T:
    """Build `cls` from env with the parsed CLI flags on top."""
    names = {f.name for f, _ in _fields(cls)}
    return load_settings(cls, environ, **{k: v for k, v in vars(args).items() if k in names})


def to_env(settings: Any) -> dict[str, str]:
    """The environment that makes a child process read the same `settings` (inverse of load)."""
    out: dict[str, str] = {}
    for f, kind in _fields(type(settings)):
        value = getattr(settings, f.name)
        if kind is bool:
            out[f.metadata["env"]] = "true" if value else "false"
        else:
            out[f.metadata["env"]] = str(value)
    return out
