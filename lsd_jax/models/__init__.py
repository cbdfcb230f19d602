"""Models: the per-frame autoencoder, the causal DiT denoiser, the text encoder, named sizes."""
