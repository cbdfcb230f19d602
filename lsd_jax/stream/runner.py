"""`lsd-stream`'s logic: check, open a source, a model and sinks, stream, summarise (cli.py
parses the flags).

Every option is checked before the model loads (`check_options`): an output that is the source,
an output or stats path that cannot be written, --frames=0, a --mesh this machine's devices
cannot hold (whether the model's heads split over it is checked as it loads). The model's weights are checked at
load (NaN/Inf refused), and the source is opened before the step compiles. Whatever ends the
stream (its end, --frames, Ctrl-C or `stop`, a source, model or sink failure) the stats count
the frames actually streamed.

The stats JSON (`run` returns the same dict):
  frames, dropped, captured, corrupt, fps, wall_s, warmup_s,
  interrupted, error, failed ("source" | "engine" | "sink" | null), truncated, frames_expected
    (what the source's header promised; truncated when fewer were read),
  latency_ms {p50, p95, p99, max, mean, count}: capture -> output frame ready on the host,
  process_ms: engine start -> output ready,
  stages_ms {read, preprocess, encode, denoise, decode, device, write}: per-stage times; encode,
    denoise and decode are null unless `profile` (see realtime.py for what each one covers),
  stage_timing: which of the two it was, in words,
  model {name, label, trained, checkpoint, size, resolution, steps, mesh}, device, source, output,
  lossless, seed,
  prompts [{frame, prompt, origin ("flag" | "schedule" | "stdin" | "osc"), effect {name, score,
    weak} (the nearest known effect, control.nearest_effect)}], seeds [{frame, seed}].
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import concurrent.futures
import threading
from typing import Any

from absl import logging
import jax

from lsd_jax.models import parallel
from lsd_jax.stream import control as control_lib
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
  model_dir: str | None = None  # None: engine.DEFAULT_CHECKPOINT, else the random tiny model
  steps: int | None = None
  tau_inf: float | None = None  # history noise at inference (None: the model's own)
  noise_scale: float | None = None  # the initial noise's scale, a temperature (None: the model's own)
  particle_noise_scale: float | None = None  # the same for a prompt read as a particle effect
  kernel_impl: str | None = None  # pallas_kernels.api implementation (None: the model's own)
  mesh: str | None = None  # devices the denoiser splits over (models.parallel), e.g. "model:4"
  anchor_prompts: bool | None = None  # prompts.anchor_many (None: on for a trained model)
  ae_conv: str | None = None  # the autoencoder's convolutions, auto / xla / gemm (None: auto, gemm_conv.resolve)
  bake_params: bool = False  # the weights as constants of the compiled frame (engine.StreamModel)
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


class OptionError(ValueError):
  """An option that cannot work, found before anything loads; its message names the option."""


def _is_path_source(spec: str) -> bool:
  return not (spec.startswith("webcam") or spec.startswith("procedural"))


def check_options(opts: StreamOptions) -> None:
  """Raises OptionError for options that cannot work, before any model loads or compiles."""
  if opts.frames is not None and opts.frames < 1:
    raise OptionError(f"--frames must be at least 1, got {opts.frames}")
  if opts.transition_frames < 0:
    raise OptionError(f"--transition_frames must be >= 0, got {opts.transition_frames}")
  if opts.steps is not None and not 1 <= opts.steps <= engine.MAX_STEPS:
    raise OptionError(f"--steps must be in 1..{engine.MAX_STEPS}, got {opts.steps}")
  try:
    parallel.make_mesh(opts.mesh)
  except ValueError as e:
    raise OptionError(f"--mesh={opts.mesh}: {e}") from e
  if opts.bake_params and opts.mesh and parallel.make_mesh(opts.mesh) is not None:  # model:1 is no mesh
    raise OptionError(f"--bake_params needs one device; --mesh={opts.mesh} splits the model (leave one out)")
  files = [("--output", opts.output), ("--stats", opts.stats)]
  files = [(flag, path) for flag, path in files if path]
  if _is_path_source(opts.source) and os.path.exists(opts.source):
    for flag, path in files:
      if io.same_file(path, opts.source):
        raise OptionError(f"{flag}={path} is the source file {opts.source}: refusing to "
                          "overwrite the input")
  if len(files) == 2 and io.same_file(files[0][1], files[1][1]):
    raise OptionError(f"--output and --stats name the same file {opts.output}")
  for flag, path in files:
    try:
      io.check_output_file(flag, path)
    except OSError as e:
      raise OptionError(str(e)) from e
  if opts.vcam:
    try:
      import pyvirtualcam  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
      raise OptionError("--vcam needs pyvirtualcam: pip install 'lsd-jax[vcam]' "
                        "(pyvirtualcam==0.15.0, plus v4l2loopback on Linux)") from e


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


class _Prompts:
  """Applies prompt changes (schedule, live control) before frames and records them, each with
  its nearest known effect (matched in a background thread: a stream does not wait for it)."""

  def __init__(self, session: engine.StreamSession, opts: StreamOptions,
               schedule: list[tuple[int, str]], control: control_lib.LiveControl | None):
    self.session, self.control = session, control
    self.pending = list(schedule)
    self.transition = opts.transition_frames
    self.records: list[dict[str, Any]] = []
    self.seeds: list[dict[str, int]] = []
    self._matcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lsd-match")
    self._futures: list[tuple[dict[str, Any], concurrent.futures.Future]] = []
    self._record(0, opts.prompt, "flag")

  def _record(self, frame: int, text: str, origin: str) -> None:
    rec = {"frame": frame, "prompt": text, "origin": origin, "effect": None}
    self.records.append(rec)
    encoder = self.session.model.text_encoder if text.strip() else None
    fut = self._matcher.submit(control_lib.nearest_effect, text, encoder)
    fut.add_done_callback(lambda f, rec=rec: self._matched(rec, f))
    self._futures.append((rec, fut))

  @staticmethod
  def _matched(rec: dict[str, Any], fut: concurrent.futures.Future) -> None:
    rec["effect"] = fut.result()
    line = f"frame {rec['frame']}: " + control_lib.describe_effect(rec["prompt"], rec["effect"])
    (logging.warning if rec["effect"] and rec["effect"]["weak"] else logging.info)("%s", line)

  def before_frame(self, n: int) -> None:
    while self.pending and self.pending[0][0] <= n:
      _, text = self.pending.pop(0)
      self.session.set_prompt(text, self.transition)
      self._record(n, text, "schedule")
    for cmd in self.control.drain() if self.control is not None else ():
      if cmd.kind == "prompt":
        self.session.set_prompt(cmd.value, self.transition)
        self._record(n, cmd.value, cmd.origin)
      elif cmd.kind == "transition":
        self.transition = cmd.value
        logging.info("frame %d: prompt changes now blend over %d frames", n, cmd.value)
      elif cmd.kind == "seed":
        self.session.reset(seed=cmd.value)
        self.seeds.append({"frame": n, "seed": cmd.value})
        logging.info("frame %d: restarted the stream with seed %d", n, cmd.value)

  def finish(self, timeout_s: float = 60.0) -> None:
    """Waits for the effect matches still running (each one a text-encoder call)."""
    concurrent.futures.wait([f for _, f in self._futures], timeout=timeout_s)
    self._matcher.shutdown(wait=False, cancel_futures=True)


def _write_stats(path: str, result: dict[str, Any]) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)


def _truncation(source: Any, stats: realtime.StreamStats, opts: StreamOptions) -> int | None:
  """Frames the source promised (its header) when it delivered fewer before ending by itself."""
  expected = getattr(source, "num_frames", None)
  if (not expected or stats.interrupted or stats.failed in ("engine", "sink")
      or (opts.frames is not None and stats.frames >= opts.frames)):
    return None
  return expected if stats.captured + stats.corrupt < expected else None


def run(opts: StreamOptions, *, stop: threading.Event | None = None,
        control: control_lib.LiveControl | None = None) -> dict[str, Any]:
  """Streams opts.source to the sinks; returns (and writes to opts.stats) the stats dict.

  `stop` ends the stream at the next frame (Ctrl-C in the CLI); set during the warm-up it ends
  the run before the first frame. `control` feeds live prompt, transition and seed changes.
  Raises OptionError, io.SourceError or export.CheckpointError with a message for the user,
  before the model compiles; later failures are returned in the dict ("error", "failed").
  """
  stop = stop or threading.Event()
  check_options(opts)
  schedule = load_schedule(opts.prompt_schedule) if opts.prompt_schedule else []
  model = engine.StreamModel.load(opts.model_dir, steps=opts.steps, tau_inf=opts.tau_inf,
                                  noise_scale=opts.noise_scale, particle_noise_scale=opts.particle_noise_scale,
                                  kernel_impl=opts.kernel_impl, mesh=opts.mesh,
                                  anchor_prompts=opts.anchor_prompts, ae_conv=opts.ae_conv,
                                  bake_params=opts.bake_params)
  logging.info("model: %s", model.info.label)
  session = engine.StreamSession(model, seed=opts.seed, prompt=opts.prompt)
  source = io.open_source(opts.source, height=model.height, width=model.width, seed=opts.seed)
  lossless = (not source.live) if opts.lossless is None else opts.lossless
  if source.num_frames is None and opts.frames is None and not source.live:
    logging.warning("%s never ends: stop it with Ctrl-C or pass --frames", source.name)
  logging.info("compiling the step for %s (%s, S=%d)", model.info.resolution, model.cfg.size,
               model.cfg.steps)
  warmup_s = session.warmup(profile=opts.profile)
  logging.info("compiled and warmed up in %.1f s", warmup_s)
  prompts = _Prompts(session, opts, schedule, control)
  stats = realtime.StreamStats()
  if stop.is_set():
    stats.interrupted = True
    logging.warning("interrupted during the warm-up: nothing was streamed")
  else:
    stats = _stream(opts, source, session, lossless, prompts, stop)
  prompts.finish()
  if stats.error:
    logging.error("the %s failed after %d frames: %s", stats.failed, stats.frames, stats.error)
  expected = _truncation(source, stats, opts)
  result = stats.summary()
  result.update({
      "warmup_s": warmup_s, "truncated": expected is not None,
      "frames_expected": getattr(source, "num_frames", None),
      "stage_timing": PROFILE_NOTE if opts.profile else FUSED_NOTE,
      "model": model.info.to_dict(), "device": describe_device(), "source": source.name,
      "output": opts.output if stats.frames else None, "lossless": lossless,
      "side_by_side": opts.side_by_side, "seed": opts.seed, "prompts": prompts.records,
      "seeds": prompts.seeds,
  })
  if expected is not None:
    logging.warning("%s is truncated: read %d of the %d frames its header promises",
                    source.name, stats.captured + stats.corrupt, expected)
  if opts.stats:
    try:
      _write_stats(opts.stats, result)
    except OSError as e:
      result["stats_error"] = f"cannot write --stats={opts.stats}: {e.strerror or e}"
  return result


def _stream(opts: StreamOptions, source: Any, session: engine.StreamSession, lossless: bool,
            prompts: _Prompts, stop: threading.Event) -> realtime.StreamStats:
  try:
    sink = io.Composite(_sinks(opts, source.fps, session), side_by_side=opts.side_by_side)
  except (io.SinkUnavailable, OSError, ValueError) as e:
    stats = realtime.StreamStats()
    stats.fail("sink", e)
    return stats
  total = opts.frames if opts.frames is not None else source.num_frames
  bar = None
  if opts.progress and not source.live:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    bar = tqdm(total=total, unit="frame", desc="lsd-stream", dynamic_ncols=True)

  def on_frame(n: int, stats: realtime.StreamStats) -> None:
    if n == 1:
      logging.info("streaming: first frame out after %.0f ms", stats.process.max * 1e3)
    if bar is not None:
      bar.update(1)

  try:
    stats = realtime.run(source, session, sink, lossless=lossless, max_frames=opts.frames,
                         profile=opts.profile,
                         pace_fps=None if (lossless or source.live) else source.fps,
                         before_frame=prompts.before_frame, stop=stop, on_frame=on_frame)
  finally:
    if bar is not None:
      bar.close()
  try:
    sink.close()
  except (OSError, ValueError) as e:  # PyAV raises its errors as OSError / ValueError kinds
    if stats.error is None:
      stats.fail("sink", e)
  return stats


def summary_table(result: dict[str, Any]) -> str:
  """The end-of-run table the CLI prints."""
  def ms(d, key="p50"):
    return "-" if not d else f"{d[key]:.2f}"

  lat = result["latency_ms"]
  frames = str(result["frames"])
  if result.get("truncated"):
    frames += f" (source truncated: its header promises {result['frames_expected']})"
  elif result.get("interrupted"):
    frames += " (interrupted)"
  rows = [
      ("model", result["model"]["label"]),
      ("device", result["device"]),
      ("source", result["source"]),
      ("mode", "lossless" if result["lossless"] else "realtime (latest frame)"),
      ("frames", frames),
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
  for p in result.get("prompts", []):
    e = p.get("effect")
    if p["prompt"] and e:
      rows.append((f"prompt @ frame {p['frame']}", f"{p['prompt'][:40]!r} -> {e['name']} "
                   f"({e['score']:.2f}{', weak' if e['weak'] else ''})"))
  if result.get("output"):
    rows.append(("output", result["output"]))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
