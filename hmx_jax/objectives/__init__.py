"""Pure loss functions for the training objectives.

Each module holds jittable functions of arrays only (no model, no optimizer):
`grpo` has group advantages and the clipped policy loss in TRL's GRPO
vocabulary; `contrastive` has TRL's DPO preference losses and the online
pairing of a group's best and worst answers. Import the module you need,
e.g. `from hmx_jax.objectives import grpo`.
"""
