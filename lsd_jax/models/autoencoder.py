"""Per-frame convolutional autoencoder, spatial factor 8, no temporal compression.

A temporal autoencoder would force chunks; this one encodes and decodes each frame alone, so
the stream stays one frame in, one frame out. Deterministic (not a VAE): latents are divided
by `latent_scale`, measured on data after training, so the diffusion sees roughly unit variance.

Two kinds (`AutoencoderSize.kind`):
- ``"conv"``: GroupNorm residual blocks at every level from full resolution down (the models
  before v3; about 25 GFLOPs to encode and decode a 256x256 frame at the small size);
- ``"light"``: space-to-depth by 4 (a 4x4 pixel block becomes 48 channels), norm-free residual
  blocks at 1/4 and 1/8 resolution, depth-to-space back: no convolution ever runs at full
  resolution, so it costs about a sixth (3.6 GFLOPs at the small size).

`conv_impl` picks how every convolution is computed, on the same parameters: "xla" (lax's
convolution; a cuDNN call on a GPU, which XLA keeps out of its command buffers) or "gemm"
(`gemm_conv`: im2col + one GEMM, which lets a GPU run the whole stream frame as one command buffer).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsd_jax.models import gemm_conv
from lsd_jax.models import sharding as sh
from lsd_jax.models.sizes import AE_FACTOR, LIGHT_STEM, AutoencoderSize


def _conv(features: int, stride: int = 1, kernel: int = 3, name: str | None = None, dtype=jnp.bfloat16,
          impl: str = "xla", kernel_init=nn.initializers.lecun_normal()):
  # The implementation goes in as nn.Conv's conv_general_dilated, so the parameters (names,
  # shapes) are the same for both and every checkpoint loads with either.
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME", dtype=dtype,
                 kernel_init=sh.init(kernel_init, sh.KERNEL_H, sh.KERNEL_W, sh.CONV_IN, sh.CONV_OUT),
                 bias_init=sh.init(nn.initializers.zeros, sh.CONV_OUT), name=name,
                 conv_general_dilated=gemm_conv.conv_fn(impl))


def _norm(name: str | None = None):
  return nn.GroupNorm(num_groups=8, epsilon=1e-5, dtype=jnp.float32, name=name,
                      scale_init=sh.init(nn.initializers.ones, sh.CONV_OUT),
                      bias_init=sh.init(nn.initializers.zeros, sh.CONV_OUT))


class ResBlock(nn.Module):
  features: int
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    h = _conv(self.features, dtype=self.dtype, impl=self.conv_impl)(nn.silu(_norm()(x)).astype(self.dtype))
    h = _conv(self.features, dtype=self.dtype, impl=self.conv_impl)(nn.silu(_norm()(h)).astype(self.dtype))
    if x.shape[-1] != self.features:
      x = _conv(self.features, kernel=1, dtype=self.dtype, impl=self.conv_impl)(x.astype(self.dtype))
    return x + h


class Encoder(nn.Module):
  size: AutoencoderSize
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x_NxHxWx3):
    ch = self.size.channels
    x = _conv(ch[0], dtype=self.dtype, impl=self.conv_impl)(x_NxHxWx3.astype(self.dtype))
    for i, w in enumerate(ch):
      for _ in range(self.size.blocks):
        x = ResBlock(w, self.dtype, conv_impl=self.conv_impl)(x)
      if i < len(ch) - 1:
        x = _conv(x.shape[-1], stride=2, dtype=self.dtype, impl=self.conv_impl)(x)
    x = nn.silu(_norm()(x)).astype(self.dtype)
    return _conv(self.size.latent_channels, dtype=self.dtype, impl=self.conv_impl)(x).astype(jnp.float32)


class Decoder(nn.Module):
  size: AutoencoderSize
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, z_NxhxwxC):
    ch = self.size.channels[::-1]
    x = _conv(ch[0], dtype=self.dtype, impl=self.conv_impl)(z_NxhxwxC.astype(self.dtype))
    for i, w in enumerate(ch):
      for _ in range(self.size.blocks):
        x = ResBlock(w, self.dtype, conv_impl=self.conv_impl)(x)
      if i < len(ch) - 1:
        n, h, wd, c = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * wd, c), "nearest")
        x = _conv(c, dtype=self.dtype, impl=self.conv_impl)(x)
    x = nn.silu(_norm()(x)).astype(self.dtype)
    return _conv(3, dtype=self.dtype, impl=self.conv_impl)(x).astype(jnp.float32)


def space_to_depth(x_NxHxWxC, f: int):
  """N x H x W x C -> N x H/f x W/f x (f*f*C), each f x f block's pixels along channels."""
  n, h, w, c = x_NxHxWxC.shape
  x = x_NxHxWxC.reshape(n, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // f, w // f, f * f * c)


def depth_to_space(x_NxhxwxC, f: int):
  """The inverse of `space_to_depth`."""
  n, h, w, c = x_NxhxwxC.shape
  x = x_NxhxwxC.reshape(n, h, w, f, f, c // (f * f)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * f, w * f, c // (f * f))


class LightResBlock(nn.Module):
  """x + conv(silu(conv(silu(x)))), no normalisation; the second conv starts at zero, so
  every block starts as the identity (trainable without norms, and cheap at inference)."""

  features: int
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    h = _conv(self.features, dtype=self.dtype, impl=self.conv_impl)(nn.silu(x).astype(self.dtype))
    h = _conv(self.features, dtype=self.dtype, impl=self.conv_impl, kernel_init=nn.initializers.zeros)(nn.silu(h))
    return x + h


class LightEncoder(nn.Module):
  size: AutoencoderSize
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x_NxHxWx3):
    c1, c2 = self.size.channels
    x = space_to_depth(x_NxHxWx3.astype(self.dtype), LIGHT_STEM)
    x = _conv(c1, dtype=self.dtype, impl=self.conv_impl)(x)
    for _ in range(self.size.blocks):
      x = LightResBlock(c1, self.dtype, conv_impl=self.conv_impl)(x)
    x = _conv(c2, kernel=1, dtype=self.dtype, impl=self.conv_impl)(space_to_depth(x, 2))
    for _ in range(self.size.blocks):
      x = LightResBlock(c2, self.dtype, conv_impl=self.conv_impl)(x)
    return _conv(self.size.latent_channels, dtype=self.dtype, impl=self.conv_impl)(nn.silu(x)).astype(jnp.float32)


class LightDecoder(nn.Module):
  size: AutoencoderSize
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, z_NxhxwxC):
    c1, c2 = self.size.channels
    x = _conv(c2, dtype=self.dtype, impl=self.conv_impl)(z_NxhxwxC.astype(self.dtype))
    for _ in range(self.size.dec_blocks[0]):
      x = LightResBlock(c2, self.dtype, conv_impl=self.conv_impl)(x)
    x = depth_to_space(_conv(4 * c1, kernel=1, dtype=self.dtype, impl=self.conv_impl)(nn.silu(x)), 2)
    for _ in range(self.size.dec_blocks[1]):
      x = LightResBlock(c1, self.dtype, conv_impl=self.conv_impl)(x)
    x = _conv(3 * LIGHT_STEM * LIGHT_STEM, dtype=self.dtype, impl=self.conv_impl)(nn.silu(x))
    return depth_to_space(x, LIGHT_STEM).astype(jnp.float32)


class Autoencoder(nn.Module):
  """Frames in [-1, 1] (N x H x W x 3, H and W divisible by 8) <-> latents N x H/8 x W/8 x C."""

  size: AutoencoderSize
  latent_scale: float = 1.0
  dtype: jnp.dtype = jnp.bfloat16
  conv_impl: str = "xla"  # gemm_conv.CONV_IMPLS: how the convolutions run (same parameters)

  def setup(self):
    gemm_conv.conv_fn(self.conv_impl)  # an unknown name fails here, with the known ones
    if self.size.kind == "light":
      self.encoder = LightEncoder(self.size, self.dtype, self.conv_impl)
      self.decoder = LightDecoder(self.size, self.dtype, self.conv_impl)
      return
    if len(self.size.channels) != 4:
      raise ValueError("the autoencoder needs 4 levels for its factor of 8")
    self.encoder = Encoder(self.size, self.dtype, self.conv_impl)
    self.decoder = Decoder(self.size, self.dtype, self.conv_impl)

  def encode(self, x_NxHxWx3):
    _, h, w, c = x_NxHxWx3.shape
    if h % AE_FACTOR or w % AE_FACTOR or c != 3:
      raise ValueError(f"frames must be N x H x W x 3 with H, W divisible by {AE_FACTOR}; got {x_NxHxWx3.shape}")
    return self.encoder(x_NxHxWx3) / self.latent_scale

  def decode(self, z_NxhxwxC):
    return self.decoder(z_NxhxwxC * self.latent_scale)

  def __call__(self, x_NxHxWx3):
    return self.decode(self.encode(x_NxHxWx3))
