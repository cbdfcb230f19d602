"""Live streaming: the per-frame engine, sources and sinks, realtime scheduling, CLI and server.

Importing this package loads no video or web dependency: `engine` needs only jax, flax, numpy
and OpenCV (so the GPU benchmark runs where PyAV is not installed).
"""
