"""Pure loss functions for the training objectives.

Each module holds jittable functions of arrays only (no model, no optimizer):
`grpo` has group advantages and the clipped policy loss in TRL's GRPO
vocabulary. Import the module you need, e.g.
`from hmx_jax.objectives import grpo`.
"""
