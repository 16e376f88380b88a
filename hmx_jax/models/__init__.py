"""Models: `ModelConfig` presets, the linen decoder, loading and export.

Public API:
  load_model(spec, *, dtype=None, mesh=None) -> (config, params, tokenizer)
  forward(config, params, tokens, attention_mask) -> logits [B, T, V] f32
  export_hf(config, params, tokenizer, out_dir)
"""

from hmx_jax.models.config import (PRESETS, ModelConfig, RopeScaling,
                                   family_config, from_hf_config,
                                   to_hf_config)
from hmx_jax.models.decoder import (Decoder, abstract_params, count_params,
                                    forward, init_cache, init_params)
from hmx_jax.models.loading import (EMBEDDED_MODEL, export_hf, load_model,
                                    place_params)

__all__ = [
    "PRESETS", "ModelConfig", "RopeScaling", "family_config",
    "from_hf_config", "to_hf_config", "Decoder", "abstract_params",
    "count_params", "forward", "init_cache", "init_params", "EMBEDDED_MODEL",
    "export_hf", "load_model", "place_params",
]
