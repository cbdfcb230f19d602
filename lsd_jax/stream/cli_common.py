"""What both streaming command lines do before and around their work: help, logs, Ctrl-C.

- `own_help`: `--help` lists the tool's own flags (absl shows a program's "key flags"; run as a
  console script the program is the script, which defines none, so --help printed only a usage
  line and the tool's flags hid under --helpfull).
- `quiet_backend_probe`: drops jax's "Unable to initialize backend 'tpu'" line, which jax logs
  at INFO while it looks for accelerators on every start and which reads like an error.
- `InterruptWatch`: Ctrl-C stops the work at the next frame boundary and says so at once, even
  while the main thread is inside a compilation (which holds Python's signal handler back);
  a second Ctrl-C quits at once with status 130.
"""

from __future__ import annotations

import logging as py_logging
import os
import signal
import sys
import threading
from collections.abc import Iterable

from absl import flags
from absl import logging

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C


def own_help(doc: str | None, modules: Iterable[str]) -> None:
  """Makes `--help` print `doc` and the flags defined in `modules` (absl key flags)."""
  main = sys.modules.get("__main__")
  if main is not None and doc and not getattr(main, "__doc__", None):
    main.__doc__ = doc
  fv = flags.FLAGS
  by_module = fv.flags_by_module_dict()
  for name in modules:
    for flag in by_module.get(name, []):
      fv.register_key_flag_for_module(sys.argv[0], flag)


class _DropBackendProbe(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.levelno <= py_logging.INFO
                and str(record.msg).startswith("Unable to initialize backend"))


def quiet_backend_probe() -> None:
  """Silences jax's INFO line for each accelerator plugin it probes and does not find."""
  py_logging.getLogger("jax._src.xla_bridge").addFilter(_DropBackendProbe())


class InterruptWatch:
  """SIGINT -> `stop` set (and `message` printed) at once; a second SIGINT -> exit 130 at once.

  The C-level handler writes to a wakeup pipe that a thread reads, so the first Ctrl-C is
  acknowledged even while the main thread is compiling; Python's own handler is replaced by a
  no-op, so no KeyboardInterrupt lands in the middle of a frame or a write.
  """

  def __init__(self, prog: str, stop: threading.Event, message: str = "stopping at the next frame"):
    self.prog, self.stop, self.message = prog, stop, message
    self.count = 0
    self._read, write = os.pipe()
    os.set_blocking(write, False)
    self._old_handler = signal.signal(signal.SIGINT, lambda *_: None)
    self._old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._watch, name="sigint-watch", daemon=True)
    self._thread.start()

  def _watch(self) -> None:
    while True:
      try:
        data = os.read(self._read, 64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum != signal.SIGINT:
          continue
        self.count += 1
        if self.count == 1:
          self.stop.set()
          logging.warning("%s: interrupted: %s (Ctrl-C again to quit at once)", self.prog, self.message)
        else:
          logging.warning("%s: quitting at once", self.prog)
          os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access

  @property
  def interrupted(self) -> bool:
    return self.count > 0

  def restore(self) -> None:
    """Python's own SIGINT handling again (KeyboardInterrupt)."""
    signal.set_wakeup_fd(self._old_fd)
    signal.signal(signal.SIGINT, self._old_handler)
