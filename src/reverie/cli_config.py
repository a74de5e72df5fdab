"""`--config FILE.toml` for `reverie serve` and `reverie worker`: a file of the command's options.

The file's keys are the options' names without their dashes (`data`, `database`, `broker`,
`host`, `port`, `device`, `models`, `multi-user`, `purchase-webhook-secret`, ...; `_` for `-`
is accepted too), its values what the command line would take (a list for a repeatable option).
Precedence is click's: the command line, then an option's environment variable
(`REVERIE_DATABASE`, `REVERIE_BROKER`, ...), then the file, then the built-in default. The option
is eager, so the file is read before any other option and handed to click as `ctx.default_map`.
`REVERIE_CONFIG` names the file when `--config` is not given.

A file that is missing or not TOML, a key that is no option of the command, or a value the
option does not take is refused (exit 2) with a message naming the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Optional

import typer

NOT_SETTABLE = {"config", "help", "check"}  # options a file does not set (`--check` is an action)


def _names(command) -> dict:
    """Every name a file may give each option of `command` by: its long flags, and its own name."""
    names: dict = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name in NOT_SETTABLE:
            continue
        names[param.name] = param
        names[param.name.replace("_", "-")] = param
        for flag in param.opts + param.secondary_opts:
            if flag.startswith("--"):
                names[flag[2:]] = param
                names[flag[2:].replace("-", "_")] = param
    return names


def read_config(ctx: typer.Context, path: Path) -> dict:
    """The file's settings as click's default_map (option name -> value), each checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise typer.BadParameter(f"{path} does not exist", param_hint="'--config'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path} cannot be read ({exc})", param_hint="'--config'") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{path} is not valid TOML: {exc}", param_hint="'--config'") from None
    names = _names(ctx.command)
    settings: dict = {}
    for key, value in table.items():
        param = names.get(key)
        if param is None:
            known = ", ".join(sorted(flag[2:] for param in set(names.values()) for flag in param.opts if flag.startswith("--")))
            raise typer.BadParameter(f"{path}: unknown key {key!r} (`reverie {ctx.info_name}` takes: {known})",
                                     param_hint="'--config'")
        if isinstance(value, dict):
            raise typer.BadParameter(f"{path}: key {key!r} is a table; give the option's value", param_hint="'--config'")
        if isinstance(value, list) and not param.multiple:
            raise typer.BadParameter(f"{path}: key {key!r} takes one value, not a list", param_hint="'--config'")
        if param.multiple and not isinstance(value, list):
            value = [value]  # one value for an option that repeats
        coerce = getattr(param, "get_runtime_param", None)  # typer's own conversion, as for the command line
        try:
            if coerce is not None and not (isinstance(value, bool) and param.is_flag):
                coerce().coerce(value, param=param, ctx=ctx)
        except typer.BadParameter as exc:
            raise typer.BadParameter(f"{path}: key {key!r}: {exc.message}", param_hint="'--config'") from None
        settings[param.name] = value
    return settings


def load_config(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """The eager `--config` option's callback: the file's settings become the options' defaults."""
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **read_config(ctx, value)}
    return value


ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", envvar="REVERIE_CONFIG", is_eager=True, callback=load_config, show_default=False, dir_okay=False,
    help="A TOML file of this command's options (data = \"/srv/reverie\", port = 7860, ...); the command line "
         "and the options' environment variables win over it (see deploy/reverie.toml).")]
