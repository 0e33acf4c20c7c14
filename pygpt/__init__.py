"""pygpt: a GPT you can read in an afternoon, on kernels you can read, test and beat.

    import pygpt
    pygpt.info()                      # versions, extension build, which backend runs which op
    from pygpt.model import GPT, GPTConfig
    from pygpt import ops             # attention, layer_norm, gelu_mlp with backend=...
"""

__version__ = "0.1.0"


def __getattr__(name):
    # `pygpt.info` is a callable module (pygpt/info.py): pygpt.info() prints the report, and
    # `python -m pygpt.info` runs it; imported lazily so that -m does not find it half-imported.
    if name == "info":
        import importlib

        return importlib.import_module(".info", __name__)
    raise AttributeError(f"module 'pygpt' has no attribute {name!r}")
