"""Triton kernels, one module per op: pygpt/triton/<op>.py (attention, layer_norm, gelu_mlp).

The 'triton' backend of an op is available when its module exists here, Triton imports, and the
tensors are on a CUDA device (or TRITON_INTERPRET=1 is set before Triton is imported: the
interpreter runs the same kernels on the CPU, slowly, as the tests do in CI).
"""
