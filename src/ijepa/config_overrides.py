"""Config overrides from the command line (``section.key=value``): parsed into sections, merged over a file's,
and named in an error when the bad value came from one. Torch-free, as ``config.py``."""

from __future__ import annotations

import re

import yaml

from .errors import ConfigError


def parse_overrides(items: list[str]) -> dict:
    """``["data.batch_size=64", "optimization.ema=[0.999,1.0]"]`` -> nested dict; values are YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override '{item}': bad key '{key}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse the value ({e})") from None
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return out


def merge_overrides(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge_overrides(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def where_from(message: str, source: str, overrides: list[str]) -> str:
    """``message`` prefixed by where the bad value came from: the ``key=value`` overrides it names (and without
    the key it starts with), else ``source``, the file."""
    quoted = re.findall(r"'([\w.]+)'", message)  # an unknown key is quoted up to the part that is unknown

    def names(override: str) -> bool:
        key = override.split("=", 1)[0].strip()
        return bool(re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message)) or any(
            key == q or key.startswith(q + ".") for q in quoted)

    named = [o.strip() for o in overrides if names(o)]
    if not named:
        return f"{source}: {message}"
    key = named[0].split("=", 1)[0].strip()
    if len(named) == 1 and message.startswith(f"{named[0]}: "):  # the message quotes the override itself
        message = message[len(named[0]) + 2:]
    elif len(named) == 1 and message.startswith((f"{key}: ", f"{key} must ")):
        message = message[len(key):].lstrip(": ")
    return f"command line: {', '.join(named)}: {message}"
