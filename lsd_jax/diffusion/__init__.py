"""Diffusion: flow-matching paths and level samplers, history augmentation, the shortcut
objective and the few-step sampler."""
