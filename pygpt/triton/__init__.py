"""Triton kernels, one module per op: pygpt/triton/<op>.py (attention, layer_norm, gelu_mlp).

The 'triton' backend of an op becomes available when its module exists here; none has landed yet.
"""
