"""Embedded prompt sets, offline preference pairs (and, alongside, the
evaluation dataset loaders)."""

from hmx_jax.data.pairs import PreferencePair
from hmx_jax.data.pairs import load_pairs
from hmx_jax.data.prompt_sets import CATEGORIES
from hmx_jax.data.prompt_sets import PromptRow
from hmx_jax.data.prompt_sets import embedded_path
from hmx_jax.data.prompt_sets import load_prompts

__all__ = ["CATEGORIES", "PreferencePair", "PromptRow", "embedded_path",
           "load_pairs", "load_prompts"]
