"""hmx_jax: the HMX-feel experiment in JAX/Flax."""

__version__ = "0.1.0"
