"""Finding a model's chat template: an explicit override, `chat_template.jinja`,
`tokenizer_config.json`, or the GGUF key, first found wins.

Invariant: nothing here compiles or renders; it returns template text or None.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmcore.errors import ChatTemplateError, CorruptModelFileError

# A template text needs at least one of these; a path never has them.
_TEMPLATE_CHARS = ("{", "}", "\n")


def find_template_source(
    model_path: str | os.PathLike[str] | None,
    override: str | None,
    name: str | None,
    gguf_template: str | None,
) -> str | None:
    """The template text (see `ChatTemplate.resolve` for the order), or None."""
    if override is not None:
        return _read_override(override)
    source = _from_model_folder(model_path, name)
    return gguf_template if source is None else source


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for a path, or one with a NUL
        return False


def _read_override(override: str) -> str:
    if _is_file(override):
        try:
            return Path(override).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read chat template file {override}: {exc}") from exc
    if not any(char in override for char in _TEMPLATE_CHARS):
        raise ChatTemplateError(
            f"chat template {override!r} is not a file, nor template text (no '{{', '}}' or "
            "newline in it)"
        )
    return override


def _read_model_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptModelFileError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc


def _from_model_folder(model_path: str | os.PathLike[str] | None, name: str | None) -> str | None:
    if model_path is None or not Path(model_path).is_dir():
        return None
    folder = Path(model_path)
    candidates = [folder / "chat_template.jinja"]
    if name is not None and Path(name).name == name:  # a plain name, never a path
        candidates.insert(0, folder / "additional_chat_templates" / f"{name}.jinja")
    for candidate in candidates:
        if candidate.is_file():
            return _read_model_file(candidate)
    config = folder / "tokenizer_config.json"
    return _from_tokenizer_config(config, name) if config.is_file() else None


def _from_tokenizer_config(path: Path, name: str | None) -> str | None:
    try:
        config = json.loads(_read_model_file(path))
    except json.JSONDecodeError as exc:
        raise CorruptModelFileError(f"{path}: not valid JSON: {exc}") from exc
    value = config.get("chat_template") if isinstance(config, dict) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return _pick_named(_named_templates(value, path), name)
    raise CorruptModelFileError(f"{path}: chat_template must be a string or a list")


def _named_templates(entries: list[Any], path: Path) -> dict[str, str]:
    named = {}
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("name"), str)
        if not ok or not isinstance(entry.get("template"), str):
            raise CorruptModelFileError(
                f"{path}: each chat_template entry must be {{'name': str, 'template': str}}"
            )
        named[entry["name"]] = entry["template"]
    return named


def _pick_named(templates: dict[str, str], name: str | None) -> str | None:
    for wanted in (name, "default"):
        if wanted is not None and wanted in templates:
            return templates[wanted]
    return next(iter(templates.values()), None)
