"""The model issue's fidelity bar (lsd_jax/eval/bar.py) on hand-made results."""

import json

from lsd_jax.eval import bar


def _results(psnr_of, ceiling=36.0, inputs=None):
  names = bar.DETERMINISTIC + ("snowfall",)
  inputs = inputs or {}
  return {n: {"prompt": n, "psnr": {s: psnr_of(n, s) for s in (1, 2, 4)}, "input_psnr": inputs.get(n, 20.0),
              "ae_psnr": ceiling} for n in names}


def test_a_model_at_the_ceiling_meets_every_part():
  checked = bar.check(_results(lambda n, s: 35.5))
  assert checked["met"], checked
  assert checked["effects_below"] == [] and checked["missing"] == []
  assert checked["mean_deterministic"]["psnr"] == 35.5


def test_each_part_can_fail_on_its_own():
  # the mean: every effect passes its own floor (input 20 + 2 = 22) but the mean is 29
  low = bar.check(_results(lambda n, s: 29.0 if n != "identity" else 35.0))
  assert not low["mean_deterministic"]["ok"] and not low["met"]
  # one effect below min(input + 2, ceiling - 5) = min(32, 31) = 31 while the mean still passes
  one = bar.check(_results(lambda n, s: 30.0 if n == "thermal" else 34.8, inputs={"thermal": 30.0}))
  assert one["effects_below"] == ["thermal"] and one["mean_deterministic"]["ok"] and not one["met"]
  assert one["per_effect"]["thermal"]["need"] == 31.0
  # identity 2 dB under its ceiling
  ident = bar.check(_results(lambda n, s: 34.0 if n == "identity" else 35.5))
  assert not ident["identity"]["ok"] and not ident["met"]
  # S = 1 more than 1 dB under S = 4
  gap = bar.check(_results(lambda n, s: {1: 33.0, 2: 35.0, 4: 35.5}[s]))
  assert not gap["s1_vs_s4"]["ok"] and not gap["met"]


def test_missing_effects_and_json_round_trip():
  res = _results(lambda n, s: 35.5)
  del res["echo"]
  checked = bar.check(res)
  assert checked["missing"] == ["echo"] and not checked["met"]
  # results read back from fidelity.json carry string step keys
  again = bar.check(json.loads(json.dumps(_results(lambda n, s: 35.5))))
  assert again["met"]
  assert "| **bar (these parts)** | | | yes |" in bar.markdown(again)
  assert "**no**" in bar.markdown(checked)


def test_the_paraphrase_gap():
  val = _results(lambda n, s: 35.5)
  close = bar.check(val, train_results=_results(lambda n, s: 36.0))
  assert close["paraphrase"]["ok"] and close["met"] and abs(close["paraphrase"]["gap"] - 0.5) < 1e-9
  far = bar.check(val, train_results=_results(lambda n, s: 37.0))
  assert not far["paraphrase"]["ok"] and not far["met"]
  assert "val paraphrases within" in bar.markdown(far)
  assert bar.check(val)["paraphrase"] is None


def test_the_particle_part():
  row = lambda d, v: {"particles": {"density_ratio": d, "velocity_error_out": v, "velocity_error_gt": 0.02}}  # noqa: E731
  good = bar.particles({"snowfall": row(0.9, 0.1), "rain": row(1.14, 0.14), "sepia": {"psnr": 30.0}})
  assert good["met"] and set(good["per_effect"]) == {"snowfall", "rain"}
  for d, v in ((0.84, 0.0), (1.16, 0.0), (1.0, 0.16), (float("nan"), 0.0), (1.0, float("nan"))):
    got = bar.particles({"snowfall": row(0.9, 0.1), "bubbles": row(d, v)})
    assert not got["met"] and got["per_effect"]["snowfall"]["velocity_ok"]
  assert not bar.particles({"sepia": {"psnr": 30.0}})["met"]  # nothing measured: not met
