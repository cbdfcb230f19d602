"""Live control of a running stream: prompt, transition and seed changes from stdin or OSC.

Commands go into a `LiveControl` queue from any thread and are applied by the streaming thread
before its next frame, so a change takes effect on the next frame and never in the middle of one.

- stdin: one line, one prompt (an empty line clears it), `read_lines` in a daemon thread.
- OSC (Open Sound Control, for TouchDesigner, Max, ...; `pip install 'lsd-jax[osc]'`):
  `/lsd/prompt s` (the prompt), `/lsd/transition i` (frames over which later prompt changes
  blend), `/lsd/seed i` (restart the stream's history and noise from this seed), over UDP.

`nearest_effect` names the known effect a prompt is closest to (the model was trained on those),
with its score and a `weak` flag below WEAK_MATCH.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, TextIO

from absl import logging

MAX_PROMPT_CHARS = 2000  # the text encoder keeps 254 word pieces anyway
MAX_TRANSITION = 1000
# Below this cosine the prompt matches no known effect well: on the held-out paraphrases
# (data/prompts, split "val") 10.5% of prompts score below 0.5, and the nearest effect of the
# wrong matches has a median score of 0.56; free text far from every effect ("a cat": 0.31,
# "turn me into a cat": 0.34) lands below it. Painting-like text does not since the train
# phrases grew (2026-12-01): "make it look like a watercolor painting" reaches pencil_sketch +
# rain at 0.59 (it was 0.48), "make it look like van gogh" pencil_sketch at 0.52.
WEAK_MATCH = 0.5


@dataclasses.dataclass(frozen=True)
class Command:
  kind: str  # "prompt" | "transition" | "seed"
  value: Any
  origin: str  # "stdin" | "osc" | ...


class LiveControl:
  """A thread-safe queue of commands; `drain()` returns those waiting, oldest first."""

  def __init__(self):
    self._q: queue.SimpleQueue[Command] = queue.SimpleQueue()

  def put(self, kind: str, value: Any, origin: str) -> None:
    self._q.put(validate(kind, value, origin))

  def drain(self) -> list[Command]:
    out = []
    while True:
      try:
        out.append(self._q.get_nowait())
      except queue.Empty:
        return out


def validate(kind: str, value: Any, origin: str) -> Command:
  """A checked Command; ValueError with the reason for a bad one."""
  if kind == "prompt":
    if not isinstance(value, str):
      raise ValueError(f"a prompt must be text, got {type(value).__name__}")
    return Command(kind, value.strip()[:MAX_PROMPT_CHARS], origin)
  if kind in ("transition", "seed"):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{kind} must be an integer, got {value!r:.40}")
    if kind == "transition" and not 0 <= value <= MAX_TRANSITION:
      raise ValueError(f"transition must be in 0..{MAX_TRANSITION} frames, got {value}")
    if kind == "seed" and not 0 <= value < 2**32:
      raise ValueError(f"seed must be in 0..2^32-1, got {value}")
    return Command(kind, value, origin)
  raise ValueError(f"unknown command {kind!r}")


def read_lines(stream: TextIO, control: LiveControl, origin: str = "stdin") -> None:
  """Each line of `stream` becomes a prompt command, until end of file."""
  try:
    for line in stream:
      control.put("prompt", line.rstrip("\r\n"), origin)
  except (OSError, ValueError, UnicodeDecodeError) as e:  # a closed or undecodable stdin
    logging.warning("stopped reading prompts from %s: %s", origin, e)


def start_stdin(control: LiveControl, stream: TextIO) -> threading.Thread:
  t = threading.Thread(target=read_lines, args=(stream, control), name="lsd-stdin", daemon=True)
  t.start()
  return t


class OscServer:
  """A UDP OSC server feeding `control` (python-osc, the `osc` extra), in a daemon thread."""

  ADDRESSES = {"/lsd/prompt": "prompt", "/lsd/transition": "transition", "/lsd/seed": "seed"}

  def __init__(self, control: LiveControl, host: str = "127.0.0.1", port: int = 9000):
    try:
      from pythonosc import dispatcher, osc_server  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise RuntimeError("OSC control needs python-osc: pip install 'lsd-jax[osc]' "
                         "(python-osc==1.10.2)") from e
    self.control = control
    d = dispatcher.Dispatcher()
    for address, kind in self.ADDRESSES.items():
      d.map(address, self._handler(kind))
    d.set_default_handler(self._unknown)
    try:
      # One thread handles the datagrams in the order they came: a threading server ran each in its
      # own thread, so "/lsd/seed" could be applied before the "/lsd/transition" sent ahead of it.
      self._server = osc_server.BlockingOSCUDPServer((host, port), d)
    except OSError as e:
      raise RuntimeError(f"cannot listen for OSC on {host}:{port}: {e.strerror or e}") from e
    self.address = self._server.server_address
    self._thread = threading.Thread(target=self._server.serve_forever, name="lsd-osc", daemon=True)
    self._thread.start()
    logging.info("OSC: listening on udp://%s:%d (%s)", self.address[0], self.address[1],
                 ", ".join(self.ADDRESSES))

  def _handler(self, kind: str):
    def handle(address: str, *args) -> None:
      if len(args) != 1:
        logging.warning("OSC %s wants one argument, got %d: ignored", address, len(args))
        return
      value = args[0]
      if kind != "prompt" and isinstance(value, float) and value.is_integer():
        value = int(value)  # Max and TouchDesigner send numbers as floats unless told otherwise
      try:
        self.control.put(kind, value, "osc")
      except ValueError as e:
        logging.warning("OSC %s ignored: %s", address, e)
    return handle

  def _unknown(self, address: str, *args) -> None:
    del args
    logging.warning("OSC: unknown address %s (known: %s)", address, ", ".join(self.ADDRESSES))

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def nearest_effect(text: str, encoder=None) -> dict[str, Any] | None:
  """{"name", "score", "weak"} of the known effect nearest to `text` (prompts.match), or None
  where it cannot be computed (it is a hint, and must not end a stream)."""
  try:
    from lsd_jax.datasets import prompts  # pylint: disable=import-outside-toplevel

    name, score = prompts.match(text, encoder)
  except Exception as e:  # pylint: disable=broad-except  (a missing table, an encoder error)
    logging.warning("could not match the prompt to a known effect: %s", e)
    return None
  return {"name": str(name), "score": round(float(score), 3), "weak": float(score) < WEAK_MATCH}


def describe_effect(text: str, effect: dict[str, Any] | None) -> str:
  """One line for logs: which known effect a prompt is taken as."""
  if effect is None:
    return f"prompt {text!r}"
  line = f"prompt {text!r}: nearest known effect {effect['name']} (score {effect['score']:.2f})"
  if effect["weak"]:
    line += (f"; a weak match (below {WEAK_MATCH}): the model knows only its trained effects, "
             "see data/prompts/")
  return line
