"""Named model sizes in one table, and their parameter and FLOP counts per frame.

`count_params` and `flops_per_frame` are analytic; `tests/models/test_sizes.py` checks them
against the real parameter trees and XLA's own cost analysis.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AutoencoderSize:
  channels: tuple[int, ...]  # encoder widths per resolution level; len == 4 gives factor 8
  blocks: int  # residual blocks per level
  latent_channels: int


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
  autoencoder: AutoencoderSize
  note: str = ""


SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        ModelSize("tiny", DenoiserSize(width=64, depth=2, heads=2),
                  AutoencoderSize(channels=(16, 16, 32, 32), blocks=1, latent_channels=4),
                  "tests: seconds on a CPU"),
        ModelSize("small", DenoiserSize(width=384, depth=6, heads=6),
                  AutoencoderSize(channels=(32, 64, 96, 128), blocks=1, latent_channels=8),
                  "the shipped default: under 40 MB of bf16 weights"),
        ModelSize("base", DenoiserSize(width=768, depth=12, heads=12),
                  AutoencoderSize(channels=(32, 64, 128, 256), blocks=1, latent_channels=8),
                  "about 130M parameters"),
        ModelSize("large", DenoiserSize(width=1536, depth=30, heads=12),
                  AutoencoderSize(channels=(64, 128, 256, 256), blocks=1, latent_channels=16),
                  "about 1.3B parameters: latency targets, timed with random weights"),
    )
}

AE_FACTOR = 8
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


def autoencoder_params(size: ModelSize) -> int:
  a = size.autoencoder
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


def autoencoder_flops(size: ModelSize, height: int, width: int) -> dict[str, int]:
  """Conv FLOPs of encoding and decoding one frame."""
  a = size.autoencoder
  ch, z = a.channels, a.latent_channels

  def conv(h, w, k, ci, co):
    return 2 * h * w * k * k * ci * co

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
