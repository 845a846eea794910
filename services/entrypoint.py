"""The one `main(argv)` of every service: flags and env → frozen settings → run → exit code.

Each service declares its settings classes and an async `run(*settings)`; this module builds
the argparse parser (one flag per setting, its env name in the help), reads `os.environ` once,
configures logging and maps errors to exit codes (2: bad settings, 1: stopped on an error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fedmoe.errors import FedMoEError, SettingsError
from fedmoe.settings import add_arguments, from_args

log = logging.getLogger(__name__)


def build_parser(
    name: str, description: str, settings: Sequence[type[Any]]
) -> argparse.ArgumentParser:
    """`fedmoe service <name>` flags: every field of every settings class, env names shown."""
    parser = argparse.ArgumentParser(prog=f"fedmoe service {name}", description=description)
    parser.add_argument(
        "--log-level", default=None, help="logging level (env FEDMOE_LOG_LEVEL; default INFO)"
    )
    for cls in settings:
        add_arguments(parser, cls)
    return parser


def service_main(
    argv: Sequence[str],
    *,
    name: str,
    description: str,
    settings: Sequence[type[Any]],
    run: Callable[..., Coroutine[Any, Any, None]],
) -> int:
    """Parse `argv` and the environment into `settings` instances, then `asyncio.run(run(*them))`.

    Returns:
        0 after a clean stop, 1 when the service stopped on a `FedMoEError`, 2 on bad settings.
    """
    args = build_parser(name, description, settings).parse_args(list(argv))
    environ = os.environ
    try:
        values = [from_args(cls, args, environ) for cls in settings]
    except SettingsError as exc:
        print(f"fedmoe service {name}: {exc}", file=sys.stderr)
        return 2
    level = (args.log_level or environ.get("FEDMOE_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(run(*values))
    except FedMoEError as exc:
        log.error("%s: stopped on error: %s: %s", name, type(exc).__name__, exc)
        return 1
    return 0
