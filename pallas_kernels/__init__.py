"""Fused GPU kernels for the LSD denoiser, with an XLA fallback for every op.

The model calls only `pallas_kernels.api`; which implementation runs is a config switch
(`"xla"`, `"mosaic"`, `"triton"`, `"auto"` or `"megastep"`, the whole step in one call).
"""
