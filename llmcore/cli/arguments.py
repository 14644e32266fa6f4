"""Parsing the serving commands' arguments as `vllm serve` does: `--config FILE.yaml`
(flags from a YAML mapping, the command line winning), flag names written with
underscores (`--max_model_len`), and usage errors on one line.

Invariant: whatever is wrong with the arguments or the config file (missing,
unreadable, not YAML, not a mapping, an unknown key, a bad value) ends in
`ServingParser.error`: one line `llmcore: error: ...` on stderr and exit 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class ServingParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the usage is long)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"llmcore: error: {message} (see {self.prog} --help)\n")


def parse_serving_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """`argv` (default: sys.argv[1:]) parsed with the flags of `--config FILE` before
    them. vLLM's flags are checked by `vllm_flags.check_vllm_flags`, which the caller
    runs once logging is configured (it warns)."""
    args_in = _dashes(list(sys.argv[1:] if argv is None else argv))
    path = _config_path(parser, args_in)
    config_model: str | None = None
    if path is not None:
        config_args, config_model = config_arguments(parser, path, args_in)
        args_in = config_args + args_in
    args = parser.parse_args(args_in)
    if config_model is not None and args.model is None and not args.models:
        args.model = config_model  # the config's model, unless the command line named one
    return args


def _dashes(argv: list[str]) -> list[str]:
    """`--max_model_len=8` as `--max-model-len=8` (vLLM accepts both), up to `--`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def _config_path(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    path = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config":
            if i + 1 >= len(argv):
                parser.error("--config needs a file")
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.partition("=")[2]
    return path


def _actions_by_option(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: action for action in parser._actions for opt in action.option_strings}


def config_arguments(
    parser: argparse.ArgumentParser, path: str, argv: Sequence[str]
) -> tuple[list[str], str | None]:
    """The flags a YAML config file sets, as command-line arguments, without those
    `argv` sets itself; and its `model`, if any (vLLM's config may name the model).

    Keys are flag names with dashes or underscores (`max-model-len`, `max_model_len`);
    `true` turns a switch on, `false` leaves it off (or gives its `--no-` form); a list
    gives a repeatable flag once per item."""
    data = _load_yaml(parser, path)
    by_option = _actions_by_option(parser)
    given = {by_option[a.partition("=")[0]].dest for a in argv if a.partition("=")[0] in by_option}
    out: list[str] = []
    model: str | None = None
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name in ("model", "model-tag"):
            model = None if value is None else str(value)
            continue
        option = "--" + name
        action = by_option.get(option)
        if action is None or name == "config":
            parser.error(f"--config {path}: unknown key {key!r} (not a flag of this command)")
        if action.dest in given or value is None:
            continue
        out += _as_arguments(parser, path, option, action, value)
    return out, model


def _load_yaml(parser: argparse.ArgumentParser, path: str) -> dict[Any, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        parser.error(f"--config {path}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        parser.error(f"--config {path}: not valid YAML{line}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(
            f"--config {path}: must be a mapping of flag names to values, "
            f"not a {type(data).__name__}"
        )
    return data


def _as_arguments(
    parser: argparse.ArgumentParser, path: str, option: str, action: argparse.Action, value: Any
) -> list[str]:
    if action.nargs == 0:  # a switch: true gives it, false its --no- form if it has one
        if not isinstance(value, bool):
            parser.error(f"--config {path}: {option[2:]} is a switch: true or false, not {value!r}")
        if value:
            return [option]
        negated = "--no-" + option[2:]
        return [negated] if negated in _actions_by_option(parser) else []
    if isinstance(value, list):
        items = [_text(v) for v in value]
        if action.nargs in ("+", "*"):
            return [option, *items]
        if isinstance(action, argparse._AppendAction):
            return [part for item in items for part in (option, item)]
        return [option, ",".join(items)]
    return [option, _text(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
