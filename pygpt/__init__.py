"""pygpt: a GPT you can read in an afternoon, on kernels you can read, test and beat.

    import pygpt
    pygpt.info()                      # versions, extension build, which backend runs which op
    from pygpt.model import GPT, GPTConfig
    from pygpt import ops             # attention, layer_norm, gelu_mlp with backend=...
"""

__version__ = "0.1.0"

from . import info  # noqa: E402  (a callable module: pygpt.info() prints the report)
