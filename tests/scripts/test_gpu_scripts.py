"""The device-call scripts: valid bash, no Python of their own (what they compute is in
experiments/device_tools.py, where tests reach it), unknown stages refused, and a model brought
back in parts of PART_MB MiB (the caller's transfer limit, not the scripts') that rejoin to the
same bytes."""

import filecmp
import glob
import os
import subprocess
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "*.sh"))) + [os.path.join(ROOT, "pallas_kernels", "gpu_session.sh")]


def _env(tmp_path, **extra):
  return dict(os.environ, LSD_WHEELS="skip", OUT=str(tmp_path / "out"), **extra)


def _stub_python3(tmp_path, script: str) -> str:
  """A `python3` that runs `script` (sh) instead, first on the returned PATH: a stage's calls are
  recorded and nothing trains or evaluates."""
  stub = tmp_path / "bin"
  stub.mkdir()
  (stub / "python3").write_text(script)
  (stub / "python3").chmod(0o755)
  return f"{stub}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "gpu_" in os.path.basename(s)], ids=os.path.basename)
def test_scripts_hold_no_python(script):
  text = open(script).read()
  assert "python3 -c" not in text and "python3 - <<" not in text and "python -c" not in text


@pytest.mark.parametrize("script", ["scripts/gpu_distill.sh", "scripts/gpu_eval.sh", "scripts/gpu_train.sh",
                                    "scripts/gpu_ablation.sh", "scripts/gpu_multi.sh"])
def test_unknown_stage_is_refused(script, tmp_path):
  proc = subprocess.run(["bash", script, "no_such_stage"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 2 and "unknown stage no_such_stage" in proc.stdout


def test_export_brings_a_model_back_in_parts(tmp_path):
  model = tmp_path / "student"
  model.mkdir()
  (model / "config.json").write_text('{"lsd_config": {}}')
  (model / "params.safetensors").write_bytes(np.random.default_rng(0).bytes(33 * 2**20))  # 33 MiB
  proc = subprocess.run(["bash", "scripts/gpu_distill.sh", "export"], cwd=ROOT,
                        env=_env(tmp_path, STUDENT=str(model), PART_MB="10"), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  back = tmp_path / "out" / "student"
  parts = sorted(back.glob("params.part_*"))
  assert len(parts) == 4 and all(p.stat().st_size <= 10 * 2**20 for p in parts)
  (tmp_path / "joined").write_bytes(b"".join(p.read_bytes() for p in parts))
  assert filecmp.cmp(tmp_path / "joined", model / "params.safetensors", shallow=False)
  assert (back / "config.json").read_text() == '{"lsd_config": {}}'
  missing = subprocess.run(["bash", "scripts/gpu_distill.sh", "export"], cwd=ROOT,
                           env=_env(tmp_path, STUDENT=str(tmp_path / "nowhere")), capture_output=True, text=True, timeout=60)
  assert missing.returncode == 0 and "no student model at" in missing.stdout


def test_v3_collect_runs_brings_two_models_back_in_seven_files_and_join_rejoins_them(tmp_path):
  """`gpu_v3.sh collect_runs`: each run's config rides in runs.tgz, so runs.tgz and two 33 MiB
  models are 7 files (a call brings back 8); `gpu_carry.sh join` makes a model folder of one again,
  byte for byte."""
  work = tmp_path / "w"
  rng = np.random.default_rng(0)
  for n in ("run_v3i", "run_v3i_b"):
    (work / n / "export").mkdir(parents=True)
    (work / n / "export" / "config.json").write_text(f'{{"run": "{n}"}}')
    (work / n / "export" / "params.safetensors").write_bytes(rng.bytes(33 * 2**20))
    (work / n / "train_metrics.jsonl").write_text("{}\n")
  out = tmp_path / "out"
  proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "collect_runs"], cwd=ROOT,
                        env=_env(tmp_path, W=str(work)), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  files = [p for p in out.rglob("*") if p.is_file()]
  assert len(files) == 7 and "WARNING" not in proc.stdout, sorted(str(p) for p in files)
  assert all(p.stat().st_size <= 16 * 2**20 for p in files)
  model = tmp_path / "back" / "run_v3i_b"
  join = subprocess.run(["bash", "scripts/gpu_carry.sh", "join", str(out), "run_v3i_b", str(model)], cwd=ROOT,
                        env=_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert join.returncode == 0, join.stdout + join.stderr
  assert (model / "config.json").read_text() == '{"run": "run_v3i_b"}'
  assert filecmp.cmp(model / "params.safetensors", work / "run_v3i_b" / "export" / "params.safetensors", shallow=False)
  missing = subprocess.run(["bash", "scripts/gpu_carry.sh", "join", str(out), "run_none", str(tmp_path / "x")], cwd=ROOT,
                           env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert missing.returncode == 1 and "no " in missing.stdout


def test_stages_find_the_model_in_the_tree_or_staged(tmp_path):
  show = 'source scripts/gpu_wheels.sh; echo "$SHIPPED $LIBRARY"'
  here = subprocess.run(["bash", "-c", show], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert here.returncode == 0 and here.stdout.split()[0] == "checkpoints/lsd_small"
  # A tree whose model was moved out for a device call (a dangling link) uses the staged copy.
  tree = tmp_path / "tree"
  (tree / "scripts").mkdir(parents=True)
  (tree / "scripts" / "gpu_wheels.sh").write_text(open(os.path.join(ROOT, "scripts", "gpu_wheels.sh")).read())
  (tree / "checkpoints" / "lsd_small").mkdir(parents=True)
  os.symlink(tmp_path / "moved_away.safetensors", tree / "checkpoints" / "lsd_small" / "params.safetensors")
  (tree / ".carry" / "library").mkdir(parents=True)
  (tree / ".carry" / "library" / "manifest.json").write_text("{}")
  moved = subprocess.run(["bash", "-c", show], cwd=tree, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert moved.stdout.split() == ["/tmp/teacher", ".carry/library/manifest.json"], moved.stdout + moved.stderr


@pytest.mark.parametrize("gpus,tp,counts", [("8", "1,2,4,8", "1,4,8"), ("4", "1,2,4", "1,4"), ("2", "1,2", "1")])
def test_multi_gpu_stages_keep_to_the_machine(tmp_path, gpus, tp, counts):
  """scripts/gpu_multi.sh on an x8, x4 or x2 machine (DRY=1: the commands, not run): the TP sizes,
  the streams and the training device counts fit the GPUs there are."""
  proc = subprocess.run(["bash", "scripts/gpu_multi.sh", "tp", "overlap_chunks", "streams", "train", "train_loop"],
                        cwd=ROOT, env=_env(tmp_path, DRY="1", GPUS=gpus), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  tp_line, chunks_line, streams_line, train_line = (next(ln for ln in lines if f"--label={label}" in ln)
                                                    for label in ("tp_auto", "tp4_chunks2", "streams", "base_scaling"))
  assert f"--tp={tp} " in tp_line and "--sizes=large --resolutions=832x480 --steps=2" in tp_line
  assert "--profile" in tp_line and "--tp_pad_heads" in tp_line  # TP = 8 zero-pads the 12 heads
  assert f"--tp={tp.split(',')[-1] if int(gpus) <= 4 else 4} " in chunks_line and "--tp_chunks=2" in chunks_line
  assert streams_line.endswith(f"--tp={tp} --streams={gpus}")
  assert f"--device_counts={counts} " in train_line
  loops = [ln for ln in lines if "experiments/main.py" in ln]
  assert len(loops) == len(counts.split(",")) and all("decoded_cache" in ln for ln in loops)


def test_device_tools(tmp_path):
  from experiments import device_tools

  assert device_tools.main([]) == 2 and device_tools.main(["no_such"]) == 2
  report = {"stream": {"complete": False, "frames": 10, "planned_frames": 20, "latency": {},
                       "drift": {"psnr_ratio": 0.99, "per_effect": {"sepia": {"psnr_ratio": 1.0, "psnr_curve": [20.0]}}}}}
  path = tmp_path / "eval.json"
  path.write_text(__import__("json").dumps(report))
  proc = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "drift_summary", str(path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0 and "PARTIAL 10 of 20" in proc.stdout and "sepia" in proc.stdout, proc.stderr
  arms = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "arms", "history_augmentation"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert arms.returncode == 0 and "none" in arms.stdout.split("\n")
  mins = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "minutes", "12"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert float(mins.stdout) == 0.5


def test_device_tools_time_training_loops(tmp_path):
  """gpu_multi.sh train_loop's commands: a random autoencoder the loop can load, each loop's
  steps/s from its metrics, the runs' scaling efficiency."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  tool = lambda *a: subprocess.run([os.sys.executable, "-m", "experiments.device_tools", *a], cwd=ROOT,  # noqa: E731
                                   capture_output=True, text=True, timeout=300, env=env)
  ae = tool("random_autoencoder", "smoke", str(tmp_path / "ae"))
  assert ae.returncode == 0, ae.stderr[-2000:]
  from lsd_jax.train import tasks

  assert tasks.load_autoencoder(str(tmp_path / "ae"))[1]["size"] == "tiny"
  for n, rates in ((1, (0.1, 10.0, 10.0)), (4, (0.1, 9.0, 9.0))):
    (tmp_path / f"loop_{n}").mkdir()
    (tmp_path / f"loop_{n}" / "train_metrics.jsonl").write_text(
        "".join(__import__("json").dumps({"step": 10 * (i + 1), "steps_per_sec": r}) + "\n" for i, r in enumerate(rates)))
    assert tool("loop_rate", str(tmp_path / f"loop_{n}"), str(n), str(16 * n), str(tmp_path / "runs.jsonl")).returncode == 0
  out = tool("loop_scaling", str(tmp_path / "runs.jsonl"), str(tmp_path / "scaling.json"))
  assert out.returncode == 0 and "4 devices, batch 64: 9.00 steps/s, 144.0 samples/s per device, efficiency 90%" in out.stdout


def test_carry_room_out_and_back(tmp_path):
  """gpu_carry.sh out moves what no device stage reads (and, with nomodel, the shipped model) out
  of the tree, refuses to do it twice, and `in` brings every file back unchanged."""
  repo = tmp_path / "repo"
  files = {"reports/a/r.md": "r", "notebooks/n.ipynb": "n", "docs/d.md": "d", "data/samples/s.mp4": "s",
           "data/prompt_embeddings.npz": "keep", "checkpoints/lsd_small/params.safetensors": "w" * 1000,
           "checkpoints/ae_small_light/x": "ae", "lsd_jax/m.py": "code"}
  for rel, text in files.items():
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_text(text)
  (repo / "scripts").mkdir()
  (repo / "scripts" / "gpu_carry.sh").write_text(open(os.path.join(ROOT, "scripts", "gpu_carry.sh")).read())
  git = lambda *a: subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True)  # noqa: E731
  git("init", "-q"), git("add", "-A"), git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
  run = lambda *a: subprocess.run(["bash", "scripts/gpu_carry.sh", *a], cwd=repo, capture_output=True, text=True,  # noqa: E731
                                  env=dict(os.environ, LSD_STASH=str(tmp_path / "stash")), timeout=60)
  before = run("size")
  assert before.returncode == 0 and "of 64 MiB" in before.stdout
  out = run("out", "nomodel")
  assert out.returncode == 0, out.stdout + out.stderr
  model = run("model")  # the shipped model copied from the stash into .carry, for a call to carry alone
  assert model.returncode == 0, model.stdout + model.stderr
  assert (repo / ".carry/model/lsd_small/params.safetensors").read_text() == "w" * 1000
  gone = [r for r in files if r.split("/")[0] in ("reports", "notebooks", "docs") or r.startswith(("data/samples", "checkpoints/lsd_small"))]
  assert all(not (repo / r).exists() for r in gone) and all((tmp_path / "stash" / r).exists() for r in gone)
  assert (repo / "data/prompt_embeddings.npz").exists() and (repo / "checkpoints/ae_small_light/x").exists()
  again = run("out")
  assert again.returncode == 1 and "bring it back first" in again.stdout
  back = run("in")
  assert back.returncode == 0, back.stdout + back.stderr
  assert all((repo / r).read_text() == t for r, t in files.items())
  assert not (tmp_path / "stash").exists()
  assert git("status", "--porcelain").stdout.strip() == "?? .carry/"  # the copy is untracked (ignored in the project)
  assert run("nothing").returncode == 2


def test_v3_start_runs_the_arms_asked_for(tmp_path):
  """`gpu_v3.sh start`: one all-effects run; with AB_EXTRA a second arm beside it (run_<config>_b,
  the same flags plus AB_EXTRA); with RUN_MIN=0 none. `python3` is a stub that records its
  arguments, so nothing trains."""
  path = _stub_python3(tmp_path, '#!/bin/sh\necho "$@"\n')

  def start(**knobs):
    work = tmp_path / f"w{len(list(tmp_path.glob('w*')))}"
    work.mkdir()
    (work / "cache.log").write_text("cache ready\n")
    knobs = {"CAP_MIN": "0", **knobs}
    env = _env(tmp_path, W=str(work), START_SETTLE="0", PATH=path, CONFIG="v3e",
               AE_MIN="0", RUN_EXTRA="--config.optim.lr=1.5e-4", **knobs)
    proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "start"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for _ in range(100):  # the runs start detached: wait for each stub to have written its line
      raws = {p.stem: p.read_text() for p in work.glob("*.raw")}
      if all(raws.values()) and len(raws) == len(list(work.glob("*.pid"))):
        return raws
      time.sleep(0.05)
    raise AssertionError(f"runs did not start: {raws}")

  one = start()
  assert list(one) == ["run_v3e"] and "--config.optim.lr=1.5e-4" in one["run_v3e"]
  assert "effect_weights" not in one["run_v3e"]
  two = start(AB_EXTRA="--config.data.effect_weights=")
  assert sorted(two) == ["run_v3e", "run_v3e_b"]
  assert "--config.optim.lr=1.5e-4" in two["run_v3e_b"] and two["run_v3e_b"].rstrip().endswith("--config.data.effect_weights=")
  assert "effect_weights" not in two["run_v3e"] and f"--workdir={tmp_path}" in two["run_v3e_b"]
  assert start(RUN_MIN="0") == {}
  # the capacity run: one arm, or with CAP_AB_EXTRA two beside each other on the effects asked for
  cap = start(RUN_MIN="0", CAP_MIN="5", CAP_EFFECT="pixel_art,posterize")
  assert list(cap) == ["cap_v3e_strong"] and "--config.data.effects=pixel_art,posterize" in cap["cap_v3e_strong"]
  cap2 = start(RUN_MIN="0", CAP_MIN="5", CAP_AB_EXTRA="--config.model.patch=1", CAP_AE="/tmp/ae_committed")
  assert sorted(cap2) == ["cap_v3e_strong", "cap_v3e_strong_b"]
  assert cap2["cap_v3e_strong_b"].rstrip().endswith("--config.model.patch=1")
  assert "patch" not in cap2["cap_v3e_strong"]
  assert all("--config.autoencoder_dir=/tmp/ae_committed" in v for v in cap2.values())


def test_v3_anchored_evaluates_model_folders_only(tmp_path):
  """`gpu_v3.sh anchored`: a run's export is evaluated with the recorded text embeddings; a run
  folder that holds only its training config.json (no weights: still training, or killed) is
  skipped, not handed to eval_fidelity as a model (stretch 12's call did that)."""
  path = _stub_python3(tmp_path, '#!/bin/sh\necho "mean $@"\n')
  work = tmp_path / "w"
  (work / "run_live").mkdir(parents=True)
  (work / "run_live" / "config.json").write_text("{}")  # training, no export yet
  (work / "run_done" / "export").mkdir(parents=True)
  for f in ("config.json", "params.safetensors"):
    (work / "run_done" / "export" / f).write_text("x")
  env = _env(tmp_path, W=str(work), PATH=path)
  proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "anchored"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  calls = [line for line in proc.stdout.splitlines() if line.startswith("mean ")]
  runs = [c for c in calls if str(work) in c]
  assert len(runs) == 1 and f"--model={work}/run_done/export" in runs[0], proc.stdout
  assert "--anchor_prompts" in runs[0] and "--text_embeddings=.carry/text/anchor_texts.npz" in runs[0]
  assert "run_live" not in proc.stdout


def test_v3_protocol_runs_raw_and_anchored_for_each_export_and_returns(tmp_path):
  """`gpu_v3.sh protocol`: each run export gets the raw and the anchored protocol (both with the
  train twins), side by side in the background, and the stage returns once both have ended (it
  waits on their pids; a run still training, without an export, is skipped)."""
  path = _stub_python3(tmp_path, '#!/bin/sh\nsleep 1\necho "| **mean** | $@"\n')
  work = tmp_path / "w"
  (work / "run_live").mkdir(parents=True)
  (work / "run_v3i" / "export").mkdir(parents=True)
  (work / "run_v3i" / "export" / "params.safetensors").write_text("x")
  env = _env(tmp_path, W=str(work), PATH=path)
  proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "protocol"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  raw = (work / "fidelity_run_v3i.log").read_text()
  anchored = (work / "fidelity_anchored_run_v3i.log").read_text()
  for log in (raw, anchored):
    assert f"--model={work}/run_v3i/export" in log and "--prompts=both" in log
  assert "--anchor_prompts" in anchored and "--text_embeddings=.carry/text/anchor_texts.npz" in anchored
  assert "--anchor_prompts" not in raw and f"--out={work}/fidelity_run_v3i" in raw
  assert "-- fidelity_run_v3i" in proc.stdout and "-- fidelity_anchored_run_v3i" in proc.stdout
  assert not (work / "fidelity_run_live.log").exists()


def test_v3_anneal_continues_each_finished_run(tmp_path):
  """`gpu_v3.sh anneal`: each ANNEAL_FROM run with an export gets a `<run>_anneal` run from that
  export, with ANNEAL_CONFIG and the anneal's rate and steps; a run without an export is named and
  skipped. `python3` is a stub that records its arguments, so nothing trains."""
  path = _stub_python3(tmp_path, '#!/bin/sh\necho "$@"\n')
  work = tmp_path / "w"
  (work / "run_v3g" / "export").mkdir(parents=True)
  (work / "run_v3g" / "export" / "params.safetensors").write_text("x")
  (work / "run_v3g_b").mkdir()  # killed before its export
  env = _env(tmp_path, W=str(work), START_SETTLE="0", PATH=path,
             ANNEAL_FROM="run_v3g run_v3g_b", ANNEAL_STEPS="1200", ANNEAL_LR="3e-5")
  proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "anneal"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert "run_v3g_b has no export; not annealed" in proc.stdout
  for _ in range(100):  # detached: wait for the stub's line
    raw = work / "run_v3g_anneal.raw"
    if raw.exists() and raw.read_text():
      break
    time.sleep(0.05)
  args = (work / "run_v3g_anneal.raw").read_text()
  assert "experiments/configs/lsd.py:v3d" in args and f"--config.init_from={work}/run_v3g/export" in args
  assert "--config.total_steps=1200" in args and "--config.optim.lr=3e-5" in args
  assert f"--workdir={work}/run_v3g_anneal" in args
  assert sorted(p.name for p in work.glob("*.raw")) == ["run_v3g_anneal.raw"]


def test_v3_anchored_skips_the_warm_start_when_asked(tmp_path):
  """`gpu_v3.sh anchored` evaluates the warm start (WARM_DIR, default /tmp/v2) beside the runs,
  and with ANCHOR_WARM=0 leaves it out (measured already: stretch 13 spent 70 s on it); RUNS (a
  glob inside $W) picks the runs."""
  path = _stub_python3(tmp_path, '#!/bin/sh\necho "mean $@"\n')
  work, warm = tmp_path / "w", tmp_path / "v2"
  (work / "run_done" / "export").mkdir(parents=True)
  (work / "run_done" / "export" / "params.safetensors").write_text("x")
  warm.mkdir()
  (warm / "params.safetensors").write_text("x")

  def models(**knobs):
    env = _env(tmp_path, W=str(work), WARM_DIR=str(warm), PATH=path, **knobs)
    proc = subprocess.run(["bash", "scripts/gpu_v3.sh", "anchored"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return sorted(a.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("mean ")
                  for a in line.split() if a.startswith("--model="))

  assert models() == sorted([f"{work}/run_done/export", str(warm)])
  assert models(ANCHOR_WARM="0") == [f"{work}/run_done/export"]
  (work / "run_done_anneal" / "export").mkdir(parents=True)
  (work / "run_done_anneal" / "export" / "params.safetensors").write_text("x")
  assert models(ANCHOR_WARM="0") == [f"{work}/run_done/export", f"{work}/run_done_anneal/export"]
  assert models(ANCHOR_WARM="0", RUNS="run_*_anneal") == [f"{work}/run_done_anneal/export"]  # RUNS picks
  assert models(ANCHOR_WARM="0", RUNS="nothing_*") == []


@pytest.mark.parametrize("knobs,want", [({}, []), ({"DRIFT_NOISE": "0.5", "DRIFT_TAU": "0.3"},
                                                   ["--tau_inf=0.3", "--noise_scale=0.5"])])
def test_drift_stage_passes_the_inference_knobs(tmp_path, knobs, want):
  """gpu_eval.sh drift with a stub python3 that records its arguments: DRIFT_TAU and DRIFT_NOISE
  reach evaluate.py (and its title); unset, the model's own values are used (no flag)."""
  path = _stub_python3(tmp_path, '#!/bin/sh\necho "$@" >> "$STUB_LOG"\n')
  log = tmp_path / "calls.log"
  env = _env(tmp_path, STUB_LOG=str(log), CKPT="some/model", DRIFT_DIR=str(tmp_path / "drift"),
             PATH=path, **knobs)
  proc = subprocess.run(["bash", "scripts/gpu_eval.sh", "drift"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  evaluate, summary = log.read_text().splitlines()
  assert evaluate.startswith("experiments/evaluate.py --model=some/model --steps=1 --stream_frames=100000")
  assert summary.startswith("-m experiments.device_tools drift_summary")
  flags = [a for a in evaluate.split() if a.startswith(("--tau_inf", "--noise_scale"))]
  assert flags == want
  assert ("noise scale 0.5" in evaluate) == bool(want)
