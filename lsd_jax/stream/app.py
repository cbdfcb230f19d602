"""`lsd-stream`'s logic: open a source, a model and sinks, stream, summarise (cli.py parses flags).

The stats JSON (`run` returns the same dict):
  frames, dropped, captured, corrupt, fps, wall_s, warmup_s,
  latency_ms {p50, p95, p99, max, mean, count}: capture -> output frame ready on the host,
  process_ms: engine start -> output ready,
  stages_ms {read, preprocess, encode, denoise, decode, device, write}: per-stage times; encode,
    denoise and decode are null unless `profile` (see realtime.py for what each one covers),
  stage_timing: which of the two it was, in words,
  model {name, label, trained, checkpoint, size, resolution, steps}, device, source, output,
  lossless, prompts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import threading
from typing import Any

from absl import logging
import jax

from lsd_jax.stream import engine, io, realtime

FUSED_NOTE = ("fused: encode + denoise + decode run as one jitted step, timed together as "
              "'device' (frame upload, compute, result download); rerun with --profile for the "
              "split")
PROFILE_NOTE = ("profile: the step ran as three jitted pieces (encode with the upload, denoise, "
                "decode with the download), each waited for; 'device' is their sum")


@dataclasses.dataclass
class StreamOptions:
  source: str
  prompt: str = ""
  prompt_schedule: str | None = None
  output: str | None = None
  frames: int | None = None
  lossless: bool | None = None  # None: lossless for files, folders and procedural; realtime for cameras
  side_by_side: bool = False
  stats: str | None = None
  checkpoint: str | None = None
  steps: int | None = None
  tau_inf: float | None = None  # history noise at inference (None: the model's own)
  kernel_impl: str | None = None  # pallas_kernels.api implementation (None: the model's own)
  seed: int = 0
  window: bool = False
  vcam: bool = False
  profile: bool = False
  transition_frames: int = 0
  progress: bool = True


def load_schedule(path: str | os.PathLike) -> list[tuple[int, str]]:
  """A prompt schedule: JSON ({"frame": prompt}, [[frame, prompt]] or [{"frame", "prompt"}]) or
  text lines "frame_index<TAB>prompt" ('#' comments and blank lines ignored); sorted by frame."""
  text = pathlib.Path(path).read_text(encoding="utf-8")
  entries: list[tuple[int, str]] = []
  if pathlib.Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
    try:
      doc = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e})") from e
    items = doc.items() if isinstance(doc, dict) else doc
    for item in items:
      if isinstance(item, dict):
        item = (item.get("frame"), item.get("prompt"))
      try:
        frame, prompt = item
        entries.append((int(frame), str(prompt)))
      except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad schedule entry {item!r}; want frame and prompt") from e
  else:
    for n, line in enumerate(text.splitlines(), 1):
      if not line.strip() or line.lstrip().startswith("#"):
        continue
      frame, tab, prompt = line.partition("\t")
      if not tab or not frame.strip().isdigit():
        raise ValueError(f"{path}:{n}: want 'frame_index<TAB>prompt', got {line!r}")
      entries.append((int(frame), prompt.strip()))
  if any(f < 0 for f, _ in entries):
    raise ValueError(f"{path}: frame indices must be >= 0")
  return sorted(entries, key=lambda e: e[0])


def describe_device() -> str:
  d = jax.devices()[0]
  if d.platform == "cpu":
    cpu = platform.processor() or ""
    try:
      with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
      pass
    return f"cpu: {cpu or platform.machine()} ({os.cpu_count()} cores), jax {jax.__version__}"
  return f"{d.platform}: {d.device_kind} (x{jax.device_count()}), jax {jax.__version__}"


def _sinks(opts: StreamOptions, fps: float, session: engine.StreamSession) -> list[Any]:
  sinks: list[Any] = []
  if opts.output:
    sinks.append(io.Mp4Sink(opts.output, fps))
  if opts.window:
    try:
      sinks.append(io.WindowSink())
    except io.SinkUnavailable as e:
      logging.warning("window skipped: %s", e)
  if opts.vcam:
    w = session.model.width * (2 if opts.side_by_side else 1)
    sinks.append(io.VirtualCamSink(w, session.model.height, fps))
  return sinks


def run(opts: StreamOptions, *, stop: threading.Event | None = None) -> dict[str, Any]:
  """Streams opts.source to the sinks; returns (and writes to opts.stats) the stats dict.

  Raises io.SourceError, export.CheckpointError or ValueError with a message for the user.
  """
  schedule = load_schedule(opts.prompt_schedule) if opts.prompt_schedule else []
  model = engine.StreamModel.load(opts.checkpoint, steps=opts.steps, tau_inf=opts.tau_inf,
                                  kernel_impl=opts.kernel_impl)
  logging.info("model: %s", model.info.label)
  session = engine.StreamSession(model, seed=opts.seed, prompt=opts.prompt)
  source = io.open_source(opts.source, height=model.height, width=model.width, seed=opts.seed)
  lossless = (not source.live) if opts.lossless is None else opts.lossless
  if source.num_frames is None and opts.frames is None and not source.live:
    logging.warning("%s never ends: stop it with Ctrl-C or pass --frames", source.name)
  warmup_s = session.warmup(profile=opts.profile)
  logging.info("compiled and warmed up in %.1f s", warmup_s)
  sink = io.Composite(_sinks(opts, source.fps, session), side_by_side=opts.side_by_side)
  total = opts.frames if opts.frames is not None else source.num_frames
  bar = None
  if opts.progress and not source.live:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    bar = tqdm(total=total, unit="frame", desc="lsd-stream", dynamic_ncols=True)
  pending = list(schedule)
  prompts_used = [(0, opts.prompt)]

  def before_frame(n: int) -> None:
    while pending and pending[0][0] <= n:
      _, text = pending.pop(0)
      session.set_prompt(text, opts.transition_frames)
      prompts_used.append((n, text))
      logging.info("frame %d: prompt %r", n, text)

  interrupted = False
  stats = realtime.StreamStats()
  try:
    stats = realtime.run(source, session, sink, lossless=lossless, max_frames=opts.frames,
                         profile=opts.profile, pace_fps=None if (lossless or source.live) else source.fps,
                         before_frame=before_frame, stop=stop,
                         on_frame=(lambda n, s: bar.update(1)) if bar else None)
  except KeyboardInterrupt:
    interrupted = True
    logging.warning("interrupted: writing what was streamed so far")
  finally:
    if bar is not None:
      bar.close()
    sink.close()
  if stats.error:
    logging.error("the source failed: %s", stats.error)
  result = stats.summary()
  result.update({
      "warmup_s": warmup_s, "interrupted": interrupted,
      "stage_timing": PROFILE_NOTE if opts.profile else FUSED_NOTE,
      "model": model.info.to_dict(), "device": describe_device(), "source": source.name,
      "output": opts.output, "lossless": lossless, "side_by_side": opts.side_by_side,
      "seed": opts.seed, "prompts": [{"frame": f, "prompt": p} for f, p in prompts_used],
  })
  if opts.stats:
    os.makedirs(os.path.dirname(os.path.abspath(opts.stats)), exist_ok=True)
    with open(opts.stats, "w") as f:
      json.dump(result, f, indent=2)
  return result


def summary_table(result: dict[str, Any]) -> str:
  """The end-of-run table the CLI prints."""
  def ms(d, key="p50"):
    return "-" if not d else f"{d[key]:.2f}"

  lat = result["latency_ms"]
  rows = [
      ("model", result["model"]["label"]),
      ("device", result["device"]),
      ("source", result["source"]),
      ("mode", "lossless" if result["lossless"] else "realtime (latest frame)"),
      ("frames", str(result["frames"])),
      ("dropped / corrupt", f"{result['dropped']} / {result['corrupt']}"),
      ("fps", f"{result['fps']:.2f}"),
      ("latency ms p50/p95/p99/max", "-" if not lat else
       f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f}"),
  ]
  for s in realtime.STAGES:
    d = result["stages_ms"].get(s)
    rows.append((f"  {s} ms p50/p99", "-" if not d else f"{ms(d)} / {ms(d, 'p99')}"))
  rows.append(("stage timing", result["stage_timing"].split(":")[0]))
  rows.append(("warm-up (compile) s", f"{result['warmup_s']:.1f}"))
  if result.get("output"):
    rows.append(("output", result["output"]))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
