"""avflow_jax: AV-Flow (text to talking 4D avatar) in JAX/Flax."""

__version__ = "0.1.0"
