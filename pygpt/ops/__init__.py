"""The op layer: the only way the model reaches attention, LayerNorm and the MLP.

Each op takes `backend=` ('eager', 'sdpa' for attention, 'cpu', 'cuda', 'triton', 'auto') and
checks its arguments before dispatching; see _backends.py for what each backend means.
"""

from ._backends import (BACKENDS, FUSED, OPS, BackendUnavailable, available_backends, dtype_reason, resolve,
                        unavailable_reason)
from .attention import attention, attention_reference
from .gelu_mlp import gelu_mlp, gelu_mlp_reference
from .layer_norm import layer_norm, layer_norm_reference

__all__ = [
    "BACKENDS", "FUSED", "OPS", "BackendUnavailable", "available_backends", "dtype_reason", "resolve",
    "unavailable_reason",
    "attention", "attention_reference", "layer_norm", "layer_norm_reference", "gelu_mlp", "gelu_mlp_reference",
]
