"""Embedded prompt sets (and, alongside, the evaluation dataset loaders)."""

from hmx_jax.data.prompt_sets import CATEGORIES
from hmx_jax.data.prompt_sets import PromptRow
from hmx_jax.data.prompt_sets import embedded_path
from hmx_jax.data.prompt_sets import load_prompts

__all__ = ["CATEGORIES", "PromptRow", "embedded_path", "load_prompts"]
