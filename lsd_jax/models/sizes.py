"""Named model sizes in one table, and their parameter and FLOP counts per frame.

`count_params`, `denoiser_flops` and `autoencoder_flops` are analytic; `tests/models/test_sizes.py` checks them
against the real parameter trees and XLA's own cost analysis.
"""

from __future__ import annotations

import dataclasses


AE_KINDS = ("conv", "light")


@dataclasses.dataclass(frozen=True)
class AutoencoderSize:
  """An autoencoder's shape. `kind` "conv" (the first models'): 4 levels of GroupNorm residual
  blocks from full resolution down (`channels` has 4 widths, `blocks` per level). `kind` "light":
  a space-to-depth stem to 1/4 resolution, then two levels (1/4 and 1/8) of norm-free residual
  blocks (`channels` has 2 widths; `blocks` per encoder level, `dec_blocks` per decoder level,
  1/8 first), and a depth-to-space head: about a sixth of the conv kind's FLOPs at 256x256."""

  channels: tuple[int, ...]
  blocks: int
  latent_channels: int
  kind: str = "conv"
  dec_blocks: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in AE_KINDS:
      raise ValueError(f"autoencoder kind must be one of {AE_KINDS}, got {self.kind!r}")
    levels = 4 if self.kind == "conv" else 2
    if len(self.channels) != levels:
      raise ValueError(f"a {self.kind!r} autoencoder has {levels} levels, got channels {self.channels}")
    if self.kind == "light" and len(self.dec_blocks) != 2:
      raise ValueError(f"a light autoencoder needs dec_blocks for its 2 levels, got {self.dec_blocks}")


@dataclasses.dataclass(frozen=True)
class DenoiserSize:
  """A DiT's shape. `block_heads` / `block_mlp` (empty: `heads` / `width * mlp_ratio` in every
  block) give each block its own attention-head count and MLP width: what structured pruning
  (`lsd_jax.models.prune`) leaves. The head dimension stays `width // heads` either way."""

  width: int  # D
  depth: int  # transformer blocks
  heads: int  # N
  mlp_ratio: int = 4
  patch: int = 2  # latent pixels per token side
  block_heads: tuple[int, ...] = ()
  block_mlp: tuple[int, ...] = ()

  def __post_init__(self):
    for name, vals, full in (("block_heads", self.block_heads, self.heads),
                             ("block_mlp", self.block_mlp, self.width * self.mlp_ratio)):
      if vals and (len(vals) != self.depth or not all(1 <= v <= full for v in vals)):
        raise ValueError(f"{name} must hold {self.depth} values in [1, {full}], got {vals}")

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  def heads_of(self, block: int) -> int:
    return self.block_heads[block] if self.block_heads else self.heads

  def mlp_of(self, block: int) -> int:
    return self.block_mlp[block] if self.block_mlp else self.width * self.mlp_ratio

  @property
  def pruned(self) -> bool:
    return bool(self.block_heads or self.block_mlp)


@dataclasses.dataclass(frozen=True)
class ModelSize:
  name: str
  denoiser: DenoiserSize
  autoencoder: AutoencoderSize  # the conv kind (models before v3)
  note: str = ""
  light_autoencoder: AutoencoderSize | None = None  # the light kind, same latent channels

  def with_autoencoder(self, kind: str) -> "ModelSize":
    """This size with the autoencoder of `kind` in its `autoencoder` slot."""
    if kind == "conv":
      return self
    if kind == "light" and self.light_autoencoder is not None:
      return dataclasses.replace(self, autoencoder=self.light_autoencoder)
    raise ValueError(f"size {self.name!r} has no {kind!r} autoencoder; kinds: {AE_KINDS}")


SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        ModelSize("tiny", DenoiserSize(width=64, depth=2, heads=2),
                  AutoencoderSize(channels=(16, 16, 32, 32), blocks=1, latent_channels=4),
                  "tests: seconds on a CPU",
                  AutoencoderSize((16, 32), 1, 4, kind="light", dec_blocks=(1, 1))),
        ModelSize("small", DenoiserSize(width=384, depth=6, heads=6),
                  AutoencoderSize(channels=(32, 64, 96, 128), blocks=1, latent_channels=8),
                  "the shipped default: under 40 MB of bf16 weights",
                  AutoencoderSize((64, 128), 1, 8, kind="light", dec_blocks=(2, 1))),
        ModelSize("base", DenoiserSize(width=768, depth=12, heads=12),
                  AutoencoderSize(channels=(32, 64, 128, 256), blocks=1, latent_channels=8),
                  "about 130M parameters",
                  AutoencoderSize((64, 160), 1, 8, kind="light", dec_blocks=(2, 1))),
        ModelSize("large", DenoiserSize(width=1536, depth=30, heads=12),
                  AutoencoderSize(channels=(64, 128, 256, 256), blocks=1, latent_channels=16),
                  "about 1.3B parameters: latency targets, timed with random weights",
                  AutoencoderSize((96, 256), 1, 16, kind="light", dec_blocks=(2, 1))),
    )
}

AE_FACTOR = 8
LIGHT_STEM = 4  # the light autoencoder's space-to-depth factor (then one more 2x inside)
PROMPT_DIM = 384  # MiniLM-L6 embedding width
FREQ_DIM = 256  # sinusoidal embedding width for t, d and tau


def get_size(name: str) -> ModelSize:
  try:
    return SIZES[name]
  except KeyError:
    raise ValueError(f"unknown model size {name!r}; known: {sorted(SIZES)}") from None


def tokens_per_frame(size: ModelSize, height: int, width: int) -> int:
  p = size.denoiser.patch * AE_FACTOR
  if height % p or width % p:
    raise ValueError(f"{height}x{width} is not divisible by {p} (factor {AE_FACTOR} x patch {size.denoiser.patch})")
  return (height // p) * (width // p)


def _dense(n_in: int, n_out: int, bias: bool = True) -> int:
  return n_in * n_out + (n_out if bias else 0)


def denoiser_params(size: ModelSize, history_mode: str = "concat", history_len: int = 3) -> int:
  """Parameters of `Denoiser` (see denoiser.py for the modules these terms mirror)."""
  s, c = size.denoiser, size.autoencoder.latent_channels
  d = s.width
  in_frames = 2 + history_len if history_mode == "concat" else 2
  n = _dense(s.patch * s.patch * c * in_frames, d)  # patch embedding
  emb = lambda: _dense(FREQ_DIM, d) + _dense(d, d)  # noqa: E731  sinusoid -> MLP
  n += 2 * emb()  # t and d embedders
  if history_mode == "concat":
    n += emb() + _dense(history_len * d, d)  # tau embedder, shared over K, then mixed
  n += _dense(PROMPT_DIM, d) + _dense(d, d)  # prompt projection
  for i in range(s.depth):
    a, f = s.heads_of(i) * s.head_dim, s.mlp_of(i)  # attention and MLP inner widths
    n += (_dense(d, 6 * d)  # adaLN-zero modulation
          + _dense(d, 3 * a) + _dense(a, d)  # attention
          + _dense(d, f) + _dense(f, d))  # MLP
  n += _dense(d, 2 * d) + _dense(d, s.patch * s.patch * c)  # final adaLN + projection
  return n


def _conv(k: int, c_in: int, c_out: int) -> int:
  return k * k * c_in * c_out + c_out


def _resblock(c_in: int, c_out: int) -> int:
  n = 2 * c_in + _conv(3, c_in, c_out) + 2 * c_out + _conv(3, c_out, c_out)  # 2 GroupNorms
  if c_in != c_out:
    n += _conv(1, c_in, c_out)
  return n


def _light_resblock(c: int) -> int:
  return 2 * _conv(3, c, c)  # norm-free


def _light_autoencoder_params(a: AutoencoderSize) -> int:
  (c1, c2), z, s = a.channels, a.latent_channels, LIGHT_STEM
  enc = _conv(3, 3 * s * s, c1) + a.blocks * _light_resblock(c1) + _conv(1, 4 * c1, c2)
  enc += a.blocks * _light_resblock(c2) + _conv(3, c2, z)
  dec = _conv(3, z, c2) + a.dec_blocks[0] * _light_resblock(c2) + _conv(1, c2, 4 * c1)
  dec += a.dec_blocks[1] * _light_resblock(c1) + _conv(3, c1, 3 * s * s)
  return enc + dec


def autoencoder_params(size: ModelSize) -> int:
  a = size.autoencoder
  if a.kind == "light":
    return _light_autoencoder_params(a)
  ch, z = a.channels, a.latent_channels
  # Encoder: stem, per level blocks (+ stride-2 conv except last), norm, to-latent.
  n = _conv(3, 3, ch[0])
  c = ch[0]
  for i, w in enumerate(ch):
    for _ in range(a.blocks):
      n += _resblock(c, w)
      c = w
    if i < len(ch) - 1:
      n += _conv(3, c, c)
  n += 2 * c + _conv(3, c, z)
  # Decoder: from-latent, per level (reversed) blocks (+ upsample conv except last), norm, rgb.
  rch = ch[::-1]
  n += _conv(3, z, rch[0])
  c = rch[0]
  for i, w in enumerate(rch):
    for _ in range(a.blocks):
      n += _resblock(c, w)
      c = w
    if i < len(rch) - 1:
      n += _conv(3, c, c)
  n += 2 * c + _conv(3, c, 3)
  return n


def count_params(size: ModelSize | str, history_mode: str = "concat", history_len: int = 3) -> dict[str, int]:
  size = get_size(size) if isinstance(size, str) else size
  den = denoiser_params(size, history_mode, history_len)
  ae = autoencoder_params(size)
  return {"denoiser": den, "autoencoder": ae, "total": den + ae}


def denoiser_flops(size: ModelSize, height: int, width: int, history_mode: str = "concat",
                   history_len: int = 3) -> int:
  """Matmul FLOPs (2 per multiply-add) of one denoiser call for one frame."""
  s, c = size.denoiser, size.autoencoder.latent_channels
  d = s.width
  n_tok = tokens_per_frame(size, height, width)
  if history_mode == "concat":
    q_len, kv_len, in_frames = n_tok, n_tok, 2 + history_len
  else:  # frame-causal attention: the current frame's queries see K history frames + itself
    q_len, kv_len, in_frames = n_tok, n_tok * (history_len + 1), 2
  # In attention mode the history frames' tokens also run through every block (no KV cache).
  rows = n_tok * (history_len + 1) if history_mode == "attention" else n_tok
  fl = 2 * rows * s.patch * s.patch * c * in_frames * d
  pairs = kv_len * kv_len if history_mode == "attention" else q_len * kv_len
  for i in range(s.depth):
    a, f = s.heads_of(i) * s.head_dim, s.mlp_of(i)  # attention and MLP inner widths
    fl += 2 * rows * d * (3 * a + a + 2 * f) + 2 * 2 * pairs * a
  fl += 2 * rows * d * s.patch * s.patch * c
  return fl


def _conv_flops(h, w, k, ci, co):
  return 2 * h * w * k * k * ci * co


def _light_autoencoder_flops(a: AutoencoderSize, height: int, width: int) -> dict[str, int]:
  (c1, c2), z, s = a.channels, a.latent_channels, LIGHT_STEM
  h1, w1, h2, w2 = height // s, width // s, height // (2 * s), width // (2 * s)
  res = lambda h, w, c: 2 * _conv_flops(h, w, 3, c, c)  # noqa: E731
  enc = (_conv_flops(h1, w1, 3, 3 * s * s, c1) + a.blocks * res(h1, w1, c1)
         + _conv_flops(h2, w2, 1, 4 * c1, c2) + a.blocks * res(h2, w2, c2) + _conv_flops(h2, w2, 3, c2, z))
  dec = (_conv_flops(h2, w2, 3, z, c2) + a.dec_blocks[0] * res(h2, w2, c2) + _conv_flops(h2, w2, 1, c2, 4 * c1)
         + a.dec_blocks[1] * res(h1, w1, c1) + _conv_flops(h1, w1, 3, c1, 3 * s * s))
  return {"encode": enc, "decode": dec}


def autoencoder_flops(size: ModelSize, height: int, width: int) -> dict[str, int]:
  """Conv FLOPs of encoding and decoding one frame."""
  a = size.autoencoder
  if a.kind == "light":
    return _light_autoencoder_flops(a, height, width)
  ch, z = a.channels, a.latent_channels
  conv = _conv_flops

  def res(h, w, ci, co):
    fl = conv(h, w, 3, ci, co) + conv(h, w, 3, co, co)
    return fl + (conv(h, w, 1, ci, co) if ci != co else 0)

  enc, h, w, c = conv(height, width, 3, 3, ch[0]), height, width, ch[0]
  for i, cw in enumerate(ch):
    for _ in range(a.blocks):
      enc += res(h, w, c, cw)
      c = cw
    if i < len(ch) - 1:
      h, w = h // 2, w // 2
      enc += conv(h, w, 3, c, c)
  enc += conv(h, w, 3, c, z)
  rch = ch[::-1]
  dec, c = conv(h, w, 3, z, rch[0]), rch[0]
  for i, cw in enumerate(rch):
    for _ in range(a.blocks):
      dec += res(h, w, c, cw)
      c = cw
    if i < len(rch) - 1:
      h, w = h * 2, w * 2
      dec += conv(h, w, 3, c, c)
  dec += conv(h, w, 3, c, 3)
  return {"encode": enc, "decode": dec}


def report(size: ModelSize | str, height: int, width: int, steps: int = 1,
           history_mode: str = "concat", history_len: int = 3) -> dict[str, float]:
  """Parameters, bf16 bytes and FLOPs per frame (encode + `steps` denoiser calls + decode)."""
  size = get_size(size) if isinstance(size, str) else size
  params = count_params(size, history_mode, history_len)
  den = denoiser_flops(size, height, width, history_mode, history_len)
  ae = autoencoder_flops(size, height, width)
  return {
      "size": size.name,
      "resolution": f"{width}x{height}",
      "tokens_per_frame": tokens_per_frame(size, height, width),
      "params_denoiser": params["denoiser"],
      "params_autoencoder": params["autoencoder"],
      "params_total": params["total"],
      "bf16_megabytes": params["total"] * 2 / 1e6,
      "flops_denoiser_step": den,
      "flops_encode": ae["encode"],
      "flops_decode": ae["decode"],
      "flops_frame": ae["encode"] + steps * den + ae["decode"],
  }
