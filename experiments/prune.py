"""Structured pruning of an exported model: attention heads and MLP channels, by Taylor importance
on calibration batches, to widths in whole GPU tiles (lsd_jax/models/prune.py).

  python -m experiments.prune --config=experiments/configs/distill.py:pruned \
      --model=checkpoints/lsd_small --out=workdirs/pruned_small \
      [--config.prune.keep_heads=0.67 --config.prune.keep_mlp=0.5 --config.prune.tile=128 \
       --config.data.sources.library.manifest=data/library/manifest.json]

Writes a model folder (config.json with the per-block widths, params.safetensors, prune.json)
and prints the parameters and FLOPs per frame before and after. Fine-tune it with
experiments/configs/distill.py:pruned (--config.init_from=<out>).
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/distill.py:<arg>")
_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder to prune")
_OUT = flags.DEFINE_string("out", None, "where the pruned model folder goes")
flags.mark_flags_as_required(["config", "out"])


def _table(summary) -> str:
  keys = (("params_denoiser", "denoiser parameters", "{:,}"), ("params_total", "total parameters", "{:,}"),
          ("bf16_megabytes", "bf16 MB", "{:.1f}"), ("flops_denoiser_step", "denoiser GFLOPs / step", "{:.4g}"),
          ("flops_frame", "GFLOPs / frame (S steps)", "{:.4g}"))
  lines = ["| | before | after | ratio |", "|---|---|---|---|"]
  for k, name, fmt in keys:
    b, a = summary["before"][k], summary["after"][k]
    if k.startswith("flops"):
      b, a = b / 1e9, a / 1e9
    lines.append(f"| {name} | {fmt.format(b)} | {fmt.format(a)} | {a / b:.3f} |")
  lines.append(f"\nheads per block {summary['block_heads']}, MLP widths {summary['block_mlp']}")
  return "\n".join(lines)


def main(argv):
  del argv
  from lsd_jax.train import pruning

  summary = pruning.calibrate_and_prune(_CONFIG.value, _MODEL.value, _OUT.value)
  print(_table(summary))


if __name__ == "__main__":
  app.run(main)
