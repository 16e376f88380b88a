"""ml-collections configs: `path.py:arg` specs and `--config.a.b=value`.

A config file defines `get_config(arg)`; the part after the colon picks a
preset (`smoke`, `cpu`, ...). Overrides name existing keys only, and their
values are parsed to the type of the value they replace.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections

from hmx_jax.errors import UserError


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location("hmx_run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # A user's file: report where it broke.
    raise UserError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: defines no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except UserError:
    raise
  except Exception as e:
    raise UserError(f"{path}: get_config({arg!r}) failed "
                    f"({type(e).__name__}: {e})") from None
  return config


def _parse(text: str, like):
  if isinstance(like, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"not a boolean: {text!r}")
  if isinstance(like, int):
    return int(text)
  if isinstance(like, float):
    return float(text)
  if isinstance(like, str) or like is None:
    return text
  return type(like)(ast.literal_eval(text))


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: list[str]) -> ml_collections.ConfigDict:
  """Applies `--config.a.b=value` strings to `config` (in place).

  Raises:
    UserError: an override is malformed, names a missing key, or its value
      does not parse as the type of the current value.
  """
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise UserError(f"unrecognized argument {item!r} (overrides look like "
                      "--config.a.b=value)")
    key, _, text = item[len("--config."):].partition("=")
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise UserError(f"--config.{key}: no such key in the config")
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
      raise UserError(f"--config.{key}: no such key in the config")
    try:
      value = _parse(text, node[parts[-1]])
    except (ValueError, SyntaxError, TypeError) as e:
      raise UserError(f"--config.{key}={text}: {e}") from None
    with node.ignore_type():
      node[parts[-1]] = value
  return config


def flatten(config, prefix: str = "") -> dict:
  """{"a.b": value} for every leaf."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def differing_keys(saved: dict, config, ignore=lambda key: False
                   ) -> list[tuple[str, object, object]]:
  """(flat key, saved value, current value) where `config` differs from
  `saved` (a config as JSON), skipping keys for which `ignore` is true."""
  a = flatten(saved)
  b = flatten(json.loads(config.to_json()))
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and not ignore(k)]
