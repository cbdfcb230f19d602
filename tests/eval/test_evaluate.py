"""evaluate.py end to end on a tiny random model: a chunked stream equals one scan, and the
entry point writes its JSON, markdown, plots and per-frame series."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from lsd_jax.eval import chunks, fidelity, protocol
from lsd_jax.models import export
from tests.conftest import randomize
from tests.eval.conftest import CFG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_chunked_stream_equals_one_scan(tiny32):
  _, params = tiny32
  clip = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  prompts = protocol.choose_prompts(["sepia"])
  emb = prompts["sepia"][1]
  whole = np.asarray(fidelity.rollout_fn(CFG, 1)(params, clip, emb, jax.random.key(3)))
  fn = chunks.model_chunk_fn(CFG, 1)
  ring, outs = chunks.empty_ring(CFG), []
  for lo in (0, 3):  # two chunks of 3 frames: the ring is carried across
    hi = lo + 3
    idx = np.arange(lo, hi, dtype=np.int32)
    ring, out = fn(params, ring, clip[lo:hi], np.repeat(emb[None], hi - lo, 0), idx, jax.random.key(3))
    outs.append(np.asarray(out))
  np.testing.assert_allclose(np.concatenate(outs), whole, atol=1e-5)


def _sample_manifest(tmp_path) -> str:
  """A one-clip held-out library from the committed sample (a fresh clone has no data/library)."""
  root = tmp_path / "library"
  (root / "clips").mkdir(parents=True)
  shutil.copy(os.path.join(ROOT, "data/samples/bigbuckbunny_256.mp4"), root / "clips" / "bunny.mp4")
  (root / "manifest.json").write_text(json.dumps(
      {"clips": [{"name": "bunny", "path": "clips/bunny.mp4", "split": "heldout"}], "photos": []}))
  return str(root / "manifest.json")


def test_evaluate_cli_end_to_end(tiny32, tmp_path):
  """The entry point's files and numbers, at the model's own history noise level and at
  --tau_inf=0.5 (each recorded, the streams differ); a level in [1, inf) is refused."""
  _, params = tiny32
  model_dir = str(tmp_path / "model")  # random weights everywhere: zero-initialised layers hide the history
  export.save(model_dir, CFG, randomize(params, jax.random.key(5)), dtype="float32")
  manifest = _sample_manifest(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  outs = {}
  for tau in ("", "0.5"):
    out = outs[tau] = tmp_path / f"eval{tau or 'default'}"
    cmd = [sys.executable, "-m", "experiments.evaluate", f"--model={model_dir}", "--steps=1", f"--manifest={manifest}",
           "--clips=1", "--clip_frames=8", "--stream_frames=20", "--switch_every=5", "--chunk=8",
           "--effects=sepia,snowfall", f"--out={out}"] + ([f"--tau_inf={tau}"] if tau else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
  out = outs[""]
  for name in ("eval.json", "eval.md", "drift.png", "per_effect.png", "latency.png", "per_frame.npz"):
    assert (out / name).stat().st_size > 0, name
  r = json.loads((out / "eval.json").read_text())
  s = r["stream"]
  assert s["frames"] == 20 and set(s["per_effect"]) == {"sepia", "snowfall"}
  assert len(s["drift"]["psnr_curve"]) == 2  # segment = 2 effects x 5 frames
  assert s["switch_response"]["snowfall"]["switches"] == 2 and s["switch_response"]["sepia"]["switches"] == 1
  assert "particles" in s["per_effect"]["snowfall"] and "particles" not in s["per_effect"]["sepia"]
  assert s["latency"]["chunks"] == 3
  pf = np.load(out / "per_frame.npz")
  assert pf["psnr"].shape == (20,) and np.isnan(pf["flicker"][0]) and np.isfinite(pf["flicker"][1:]).all()
  np.testing.assert_allclose(np.mean(pf["psnr"][:10]), s["drift"]["psnr_curve"][0], rtol=1e-6)
  assert set(r["heldout"]) == {"sepia", "snowfall"} and r["heldout"]["sepia"]["frames"] == 8 - (CFG.history_len + 1)
  assert "Drift" in (out / "eval.md").read_text()
  # --tau_inf streams at that level and records it; without it the model's own level is used
  assert r["tau_inf"] == CFG.tau_inf and json.loads((outs["0.5"] / "eval.json").read_text())["tau_inf"] == 0.5
  assert not np.allclose(pf["psnr"], np.load(outs["0.5"] / "per_frame.npz")["psnr"])
  bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--model={model_dir}",
                        "--tau_inf=1.5", "--clips=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--tau_inf must be in [0, 1)" in bad.stderr


def test_eval_fidelity_cli_tau_inf(tiny32, tmp_path):
  """eval_fidelity.py records the history noise level it used; --tau_inf changes the outputs; a
  level outside [0, 1) is refused."""
  _, params = tiny32
  model_dir = str(tmp_path / "model")  # random weights everywhere: zero-initialised layers hide the history
  export.save(model_dir, CFG, randomize(params, jax.random.key(5)), dtype="float32")
  manifest = _sample_manifest(tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  means = {}
  for tau in ("", "0.5"):
    out = tmp_path / f"fid{tau or 'default'}"
    cmd = [sys.executable, os.path.join(ROOT, "experiments/eval_fidelity.py"), f"--model={model_dir}",
           f"--manifest={manifest}", "--clips=1", "--frames=6", "--steps=1", f"--out={out}"]
    extra = [f"--tau_inf={tau}", "--prompts=both"] if tau else []  # both: the train twins and the paraphrase gap
    proc = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "fidelity.json").read_text())
    assert doc["tau_inf"] == (float(tau) if tau else CFG.tau_inf)
    checked = json.loads((out / "bar.json").read_text())
    assert checked["met"] is False and checked["mean_deterministic"]["need"] == 30.0  # random weights
    if tau:
      train = json.loads((out / "fidelity_train.json").read_text())
      assert train["prompts"] == "train" and set(train["results"]) <= set(doc["results"])
      assert checked["paraphrase"]["effects"] == len(train["results"]) >= 18
    else:
      assert checked["paraphrase"] is None and not (out / "fidelity_train.json").exists()
    means[tau] = np.mean([r["psnr"]["1"] for r in doc["results"].values()])
  assert means[""] != means["0.5"]
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "experiments/eval_fidelity.py"), f"--model={model_dir}",
                        "--tau_inf=1.0", "--clips=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--tau_inf must be in [0, 1)" in bad.stderr


def test_eval_fidelity_on_the_train_split_says_it_is_not_the_bar(tiny32, tmp_path):
  """--split=train streams the library's train clips (to choose a setting without the held-out
  ones): a library whose one clip is a train clip runs, records its split and heads its bar with
  the note; the default split (held-out) finds no clip there."""
  _, params = tiny32
  model_dir = str(tmp_path / "model")
  export.save(model_dir, CFG, randomize(params, jax.random.key(5)), dtype="float32")
  manifest = _sample_manifest(tmp_path)
  doc = json.loads(open(manifest).read())
  doc["clips"][0]["split"] = "train"
  with open(manifest, "w") as f:
    json.dump(doc, f)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  cmd = [sys.executable, os.path.join(ROOT, "experiments/eval_fidelity.py"), f"--model={model_dir}",
         f"--manifest={manifest}", "--clips=1", "--frames=6", "--steps=1"]
  out = tmp_path / "train_split"
  proc = subprocess.run(cmd + ["--split=train", f"--out={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((out / "fidelity.json").read_text())["split"] == "train"
  assert (out / "bar.md").read_text().startswith("**On the train split's clips")
  assert json.loads((out / "bar.json").read_text())["split"] == "train"
  held = subprocess.run(cmd + [f"--out={tmp_path / 'held'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert held.returncode != 0 and "no readable video clip" in held.stderr and "'heldout'" in held.stderr
  assert "Traceback" not in held.stderr  # no held-out clip in this library: a message, not a crash


def test_drift_segment_must_be_whole_schedule_cycles():
  """A segment that is not a whole number of cycles would compare different effects, not time."""
  ec = protocol.EvalConfig(switch_every=125, segment=500)
  with pytest.raises(ValueError, match="not a whole number of schedule cycles"):
    ec.segment_frames(8)  # cycle 1,000 frames
  assert ec.segment_frames(4) == 500  # cycle 500: one cycle per segment
  assert protocol.EvalConfig(switch_every=125, segment=2000).segment_frames(8) == 2000
  assert protocol.EvalConfig(switch_every=125).segment_frames(8) == 1000


def test_report_header_names_a_noise_scale_other_than_one():
  """eval.md's model line names the run's initial noise scale where it is not the default 1."""
  from lsd_jax.eval import report  # pylint: disable=import-outside-toplevel
  assert report._noise_note({"noise_scale": 0.25}) == ", noise scale 0.25"
  assert report._noise_note({"noise_scale": 1.0}) == "" and report._noise_note({}) == ""
  per = {"noise_scale": 0.25, "model": {"particle_noise_scale": 1.0}}
  assert report._noise_note(per) == ", noise scale 0.25 (particle prompts 1)"


def test_per_prompt_noise_scale_in_the_evaluations(tiny32, monkeypatch):
  """A model with particle_noise_scale: prompt_noise_scales reads each prompt as the engine does;
  fidelity.evaluate with them, and a chunked stream switching between a particle prompt and
  another, give what a model with each scale fixed gives over those frames."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  from lsd_jax.datasets import prompts as prompts_lib  # pylint: disable=import-outside-toplevel
  from lsd_jax.eval import runner  # pylint: disable=import-outside-toplevel

  _, params = tiny32
  params = randomize(params, jax.random.key(7))
  monkeypatch.setattr(prompts_lib, "match_many", lambda texts, encoder=None, table=None: (
      ["snowfall" if "snow" in t else "sepia" for t in texts], np.ones(len(texts))))
  per = dataclasses.replace(CFG, noise_scale=0.25, particle_noise_scale=1.0)
  assert fidelity.prompt_noise_scales(CFG, {"snowfall": "snow"}) is None  # one scale: nothing read
  noise = fidelity.prompt_noise_scales(per, {"snowfall": "heavy snow", "sepia": "old photo", "identity": ""})
  assert noise == {"snowfall": 1.0, "sepia": 0.25, "identity": 0.25}
  rng = np.random.default_rng(0)
  clip = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  emb = {n: rng.standard_normal(384).astype(np.float32) for n in ("snowfall", "sepia")}
  spec = tuple(np.asarray(x) for x in fidelity.effects.make_spec("sepia", "none"))
  chosen = {n: (t, emb[n], spec) for n, t in (("snowfall", "heavy snow"), ("sepia", "old photo"))}
  got = fidelity.evaluate(per, params, [clip], chosen, steps_list=(1,), noise_scales=noise)
  for n, a in (("snowfall", 1.0), ("sepia", 0.25)):
    fixed = fidelity.evaluate(dataclasses.replace(CFG, noise_scale=a), params, [clip], {n: chosen[n]}, steps_list=(1,))
    assert got[n]["psnr"] == fixed[n]["psnr"] and got[n]["noise_scale"] == a
  # a chunked stream: 3 frames of each prompt; its per-frame outputs match the fixed scales'
  sched = runner.Schedule((0, 3), ("snowfall", "sepia"))
  run = lambda cfg, **kw: runner.run_stream(cfg, params, clip, chosen, sched, 6, steps=1, chunk=6, keep_frames=True, **kw)
  mixed = run(per, noise_scales=noise).outputs
  warm = run(dataclasses.replace(CFG, noise_scale=1.0)).outputs
  np.testing.assert_array_equal(mixed[:3], warm[:3])
  cold = run(dataclasses.replace(CFG, noise_scale=0.25)).outputs
  assert not np.array_equal(mixed[:3], cold[:3])
  assert not np.array_equal(mixed[3:], warm[3:])  # the scale follows the switch to sepia
