"""PyTorch's default initialisation, for the modules ported from the official (torch) code.

torch's `nn.Linear` and `nn.Conv1d` draw weights *and biases* from U(-1/sqrt(fan_in),
1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)). Flax's `nn.Dense` defaults to lecun_normal
weights (sqrt(3) larger) and zero biases; in AV-Flow the four ungated fusion layers then grow
the residual stream's std 0.87 -> 3.67 at init (torch's: 0.51 -> 0.95) and training ends 5 %
higher in validation loss (../shared/spec/av_flow_reference.md §1).
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# U(+-1/sqrt(fan_in)): variance 1/(3 fan_in).
kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def bias_init(fan_in: int) -> Callable:
  """torch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Linear(nn.Module):
  """`nn.Dense` with torch's default init, parameters boxed with logical axis names.

  The parameter tree ("kernel" (in, out), "bias" (out,)) is the one `nn.Dense` has, so
  checkpoints, the official-weight conversion and the sharding rules see no difference.

  Attributes:
    features: output width.
    logical_axes: (input axis, output axis) names for sharding; None leaves them unnamed.
    dtype: compute dtype (parameters are float32).
    kernel_init: overrides the torch default for the kernel (e.g. adaLN-zero's gate columns).
    zero_bias: start the bias at zero instead of torch's uniform (adaLN-zero).
  """
  features: int
  logical_axes: Optional[Sequence[str]] = None
  dtype: Dtype = jnp.float32
  kernel_init: Optional[Callable] = None
  zero_bias: bool = False

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    k_init = self.kernel_init or kernel_init
    b_init = nn.initializers.zeros_init() if self.zero_bias else bias_init(fan_in)
    if self.logical_axes is not None:
      k_init = nn.with_logical_partitioning(k_init, tuple(self.logical_axes))
      b_init = nn.with_logical_partitioning(b_init, (self.logical_axes[-1],))
    kernel = self.param("kernel", k_init, (fan_in, self.features), jnp.float32)
    bias = self.param("bias", b_init, (self.features,), jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias.astype(self.dtype)
