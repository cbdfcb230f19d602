"""Reconstruction PSNR of a trained autoencoder on held-out real clips (never trained on).

  python experiments/eval_autoencoder.py --autoencoder_dir=workdirs/ae_small \
      --manifest=data/library/manifest.json --height=256 --width=256 --out=reports/autoencoder.json
"""

import json
import os

import jax
import numpy as np
from absl import app, flags, logging

_AE = flags.DEFINE_string("autoencoder_dir", None, "workdir of an autoencoder run")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest")
_SPLIT = flags.DEFINE_string("split", "heldout", "manifest split")
_H = flags.DEFINE_integer("height", 256, "frame height")
_W = flags.DEFINE_integer("width", 256, "frame width")
_CLIPS = flags.DEFINE_integer("clips", 64, "random clips drawn")
_OUT = flags.DEFINE_string("out", None, "JSON written here")
_TIME = flags.DEFINE_integer("time_iters", 0, "> 0: also time encode + decode of one frame this many times "
                             "(device-resident uint8 frame in, float frame out, after a warm-up; p50 / p99)")
flags.mark_flags_as_required(["autoencoder_dir"])


def time_roundtrip(fn, params, frame_HxWx3, iters: int) -> dict[str, float]:
  """p50 / p99 / mean ms of one jitted encode + decode of one frame (block_until_ready each)."""
  import time

  x = jax.device_put(frame_HxWx3[None])
  params = jax.device_put(params)  # on the device once, as a stream holds them (not copied per call)
  for _ in range(50):
    jax.block_until_ready(fn(params, x))
  ms = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    ms.append(1e3 * (time.perf_counter() - t0))
  return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(np.mean(ms)),
          "iters": iters}


def main(argv):
  del argv
  from lsd_jax.datasets import sources
  from lsd_jax.eval import metrics
  from lsd_jax.models import lsd, sizes
  from lsd_jax.models.autoencoder import Autoencoder
  from lsd_jax.train import tasks

  params, meta = tasks.load_autoencoder(_AE.value)
  size = sizes.get_size(meta["size"]).with_autoencoder(meta["kind"])
  ae = Autoencoder(size.autoencoder, latent_scale=meta["latent_scale"])
  src = sources.VideoClipSource.from_manifest(_MANIFEST.value, _SPLIT.value, height=_H.value, width=_W.value,
                                              num_frames=4, seed=123)
  fn = jax.jit(lambda p, x: lsd.decode(ae, p, lsd.encode(ae, p, x)))
  vals = []
  for i in range(_CLIPS.value):
    clip = src[i]
    out = np.asarray(fn(params, clip))
    vals.extend(metrics.psnr(out, clip.astype(np.float32) / 255.0, axis=(1, 2, 3)).tolist())
  result = {"psnr_db_mean": float(np.mean(vals)), "psnr_db_median": float(np.median(vals)),
            "psnr_db_p10": float(np.percentile(vals, 10)), "frames": len(vals), "split": _SPLIT.value,
            "clips": sorted({c["name"] for c in json.load(open(_MANIFEST.value))["clips"] if c["split"] == _SPLIT.value}),
            "resolution": f"{_W.value}x{_H.value}", "autoencoder": meta}
  fl = sizes.autoencoder_flops(size, _H.value, _W.value)
  result["gflops_encode_decode"] = (fl["encode"] + fl["decode"]) / 1e9
  if _TIME.value > 0:
    result["latency_ms"] = time_roundtrip(fn, params, clip[0], _TIME.value)
    result["device"] = jax.devices()[0].device_kind
  logging.info("held-out PSNR %.2f dB (median %.2f) over %d frames", result["psnr_db_mean"],
               result["psnr_db_median"], len(vals))
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
