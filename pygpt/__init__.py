"""pygpt: a GPT you can read in an afternoon, on kernels you can read, test and beat.

    import pygpt
    pygpt.info()                      # versions, extension build, which backend runs which op
    from pygpt.model import GPT, GPTConfig
    from pygpt import ops             # attention, layer_norm, gelu_mlp with backend=...
"""

__version__ = "0.1.0"


def info() -> str:
    """Print and return a report of versions, the C++ extension's build and backend availability."""
    from .info import report

    text = report()
    print(text)
    return text
