"""LSD-JAX: Live Stream Diffusion in JAX.

A causal video diffusion model that transforms a live stream one frame at a time according to a
text prompt. See docs/architecture.md for the data flow and the module map.
"""

__version__ = "0.1.0"
