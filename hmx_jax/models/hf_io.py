"""Conversion between HF (transformers) checkpoints and our parameter tree.

One table (`_layer_mapping`) says, for each of our per-layer parameters,
which HF tensor it comes from and how the layout changes; loading and export
both read it, so the two directions cannot drift apart.

Safetensors are read through a memory map, one tensor at a time, and bf16 is
handled with `ml_dtypes`, so neither torch nor a full in-memory copy of the
checkpoint is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import json
import os
import struct
from typing import Any

import jax
import ml_dtypes
import numpy as np

from hmx_jax.errors import UserError
from hmx_jax.models.config import ModelConfig

_ST_DTYPES = {
    "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


# ---------------------------------------------------------------- safetensors

def _read_header(path: str) -> tuple[dict[str, Any], int]:
  try:
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
  except (OSError, struct.error, ValueError) as e:
    raise UserError(f"{path}: not a readable safetensors file ({e})") from None
  return header, 8 + n


class SafetensorsDir:
  """Lazy name -> numpy array view over one or more safetensors files."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
      files = ["model.safetensors"]
    else:
      raise UserError(f"{directory}: no model.safetensors or "
                      "model.safetensors.index.json")
    self._where: dict[str, tuple[str, dict, int]] = {}
    for name in files:
      path = os.path.join(directory, name)
      if not os.path.exists(path):
        raise UserError(f"{path}: listed in the safetensors index but missing")
      header, offset = _read_header(path)
      for tensor, info in header.items():
        if tensor != "__metadata__":
          self._where[tensor] = (path, info, offset)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def keys(self):
    return self._where.keys()

  def source(self, name: str) -> str:
    return self._where[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name][1]["shape"])

  def __getitem__(self, name: str) -> np.ndarray:
    path, info, offset = self._where[name]
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
      raise UserError(f"{path}: tensor {name} has unsupported dtype "
                      f"{info['dtype']}")
    start, end = info["data_offsets"]
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset + start,
                     shape=(end - start,))
    return data.view(dtype).reshape(info["shape"])


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` (any dtype in `_ST_DTYPES`, bf16 included)."""
  header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())
  os.replace(tmp, path)


# ------------------------------------------------------------ layout mapping

@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One of our parameters and the HF tensor it corresponds to.

  `to_ours` maps the HF array to our layout (per layer for stacked params);
  `to_hf` is its inverse.
  """
  path: tuple[str, ...]
  hf_name: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _transpose(x):
  return x.T


def _layer_mapping(c: ModelConfig) -> list[_Tensor]:
  H, K, Dh, D = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
  pre = "model.layers.{i}."

  def proj_in(heads):  # HF [heads*Dh, D] <-> ours [D, heads, Dh]
    return (lambda w: w.reshape(heads, Dh, D).transpose(2, 0, 1),
            lambda w: w.transpose(1, 2, 0).reshape(heads * Dh, D))

  def bias(heads):
    return (lambda b: b.reshape(heads, Dh), lambda b: b.reshape(heads * Dh))

  out_proj = (lambda w: w.reshape(D, H, Dh).transpose(1, 2, 0),
              lambda w: w.transpose(2, 0, 1).reshape(D, H * Dh))
  m = [
      _Tensor(("attn", "q"), pre + "self_attn.q_proj.weight", *proj_in(H)),
      _Tensor(("attn", "k"), pre + "self_attn.k_proj.weight", *proj_in(K)),
      _Tensor(("attn", "v"), pre + "self_attn.v_proj.weight", *proj_in(K)),
      _Tensor(("attn", "o"), pre + "self_attn.o_proj.weight", *out_proj),
      _Tensor(("mlp", "gate"), pre + "mlp.gate_proj.weight", _transpose,
              _transpose),
      _Tensor(("mlp", "up"), pre + "mlp.up_proj.weight", _transpose,
              _transpose),
      _Tensor(("mlp", "down"), pre + "mlp.down_proj.weight", _transpose,
              _transpose),
      _Tensor(("input_norm", "scale"), pre + "input_layernorm.weight",
              _identity, _identity),
  ]
  if c.qkv_bias:
    m += [_Tensor(("attn", f"{n}_bias"), pre + f"self_attn.{n}_proj.bias",
                  *bias(h)) for n, h in (("q", H), ("k", K), ("v", K))]
  if c.qk_norm:
    m += [_Tensor(("attn", f"{n}_norm", "scale"),
                  pre + f"self_attn.{n}_norm.weight", _identity, _identity)
          for n in ("q", "k")]
  if c.post_norms:
    norms = {"post_attn_norm": "post_attention_layernorm",
             "pre_mlp_norm": "pre_feedforward_layernorm",
             "post_mlp_norm": "post_feedforward_layernorm"}
  else:
    norms = {"pre_mlp_norm": "post_attention_layernorm"}
  m += [_Tensor((ours, "scale"), pre + f"{hf}.weight", _identity, _identity)
        for ours, hf in norms.items()]
  return m


def _global_mapping(c: ModelConfig) -> list[_Tensor]:
  m = [_Tensor(("embedding",), "model.embed_tokens.weight", _identity,
               _identity),
       _Tensor(("final_norm", "scale"), "model.norm.weight", _identity,
               _identity)]
  if not c.tie_embeddings:
    m.append(_Tensor(("lm_head",), "lm_head.weight", _transpose, _transpose))
  return m


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _hf_shape(t: _Tensor, our_shape) -> tuple[int, ...]:
  spec = jax.ShapeDtypeStruct(tuple(our_shape), np.float32)
  return tuple(jax.eval_shape(t.to_hf, spec).shape)


def hf_to_params(config: ModelConfig, tensors, abstract_params, *,
                 source: str, dtype=None) -> Iterator[tuple[tuple, np.ndarray]]:
  """Yields (param path, array in our layout), checking names and shapes.

  Args:
    config: the model config.
    tensors: mapping HF name -> numpy array (`SafetensorsDir` or a dict).
    abstract_params: our parameter shapes (`decoder.abstract_params`).
    source: checkpoint path for error messages.
    dtype: numpy dtype to cast to (default float32).

  Raises:
    UserError: a tensor is missing or has the wrong shape.
  """
  dtype = np.dtype(dtype or np.float32)

  def fetch(t: _Tensor, name: str, expected_shape) -> np.ndarray:
    if name not in tensors:
      raise UserError(f"{source}: missing tensor {name}")
    arr = tensors[name]
    want = _hf_shape(t, expected_shape)
    if tuple(arr.shape) != want:
      raise UserError(f"{source}: tensor {name} has shape {tuple(arr.shape)}, "
                      f"expected {want}")
    return t.to_ours(np.asarray(arr, dtype=np.float32)).astype(dtype)

  for t in _global_mapping(config):
    yield t.path, fetch(t, t.hf_name, _get(abstract_params, t.path).shape)
  for t in _layer_mapping(config):
    stacked_shape = _get(abstract_params, ("layers",) + t.path).shape
    layers = [fetch(t, t.hf_name.format(i=i), stacked_shape[1:])
              for i in range(config.num_layers)]
    yield ("layers",) + t.path, np.stack(layers)


def params_to_hf(config: ModelConfig, params) -> dict[str, np.ndarray]:
  """Our parameter tree -> HF state dict (numpy, parameter dtype kept)."""
  params = params.get("params", params)
  out = {}
  for t in _global_mapping(config):
    out[t.hf_name] = t.to_hf(np.asarray(_get(params, t.path)))
  for t in _layer_mapping(config):
    stacked = np.asarray(_get(params, ("layers",) + t.path))
    for i in range(config.num_layers):
      out[t.hf_name.format(i=i)] = np.ascontiguousarray(t.to_hf(stacked[i]))
  return out


def nest(pairs) -> dict:
  tree: dict = {}
  for path, value in pairs:
    _set(tree, path, value)
  return tree
