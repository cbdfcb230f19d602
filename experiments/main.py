"""Training entry point.

  python -m experiments.main --config=experiments/configs/lsd.py:small --workdir=workdirs/lsd_small \
      [--config.total_steps=20000 ...]

A run resumes from the latest checkpoint in --workdir. Multi-host: pass --distributed on every
host (see the README's "Training on a cluster").
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/<exp>.py:<arg>")
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and exports go")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (SLURM, "
                                  "Open MPI and Kubernetes are detected; else pass the three flags below)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (hosts)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from lsd_jax.train import loop

  logging.info("process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
  summary = loop.train(_CONFIG.value, os.path.abspath(_WORKDIR.value))
  logging.info("done: %s", summary)


if __name__ == "__main__":
  app.run(main)
