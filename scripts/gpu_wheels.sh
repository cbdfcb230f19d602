# Sourced by the scripts/gpu_*.sh stages: installs the carried wheels into /tmp/site and stages the
# carried model and clip library in /tmp, or, when none were carried, reuses what an earlier call on
# the same warm machine put there.
#
# A device call's working tree plus carry is limited to 64 MiB: the shipped model (39 MB, tracked),
# PyAV's wheel (35 MB), the other wheels (7 MB) and the clip library (9 MB) never fit in one call.
# Split them over two calls on one warm machine, with no local step between the calls (a machine
# goes back 30 s after a call ends). `scripts/gpu_carry.sh build` makes .carry/av, .carry/wheels and
# .carry/library; `gpu_carry.sh out nomodel` makes room for them in the first call, and `in` brings
# the model back for the next:
#   call 1 carries .carry/av .carry/wheels .carry/library  -> /tmp/site, /tmp/library
#   call 2 carries nothing (the model in the tree); a model of another folder can travel as
#     .carry/teacher (-> /tmp/teacher) where it fits
# The stages then find the model in /tmp/teacher and the library in /tmp/library by themselves
# (SHIPPED and LIBRARY below).
# A call that decodes no video (`gpu_eval.sh drift`: procedural streams; PyAV is imported lazily)
# can carry the model in the tree and only .carry/wheels. `.whl` (every wheel in one folder) still works.
# LSD_WHEELS=skip: the packages are importable already (a development machine's venv, the tests).
if [ "${LSD_WHEELS:-}" != skip ]; then
  carried=$(ls .whl/*.whl .carry/wheels/*.whl .carry/av/*.whl 2>/dev/null)
  if [ -n "$carried" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $carried || exit 1
  fi
  if [ ! -d /tmp/site/grain ]; then
    echo "no wheels carried (.whl, .carry/wheels) and none installed in /tmp/site by an earlier call"; exit 1
  fi
  for d in teacher library; do  # a carried model or library, staged where later calls find it
    if [ -d ".carry/$d" ]; then rm -rf "/tmp/$d" && cp -r ".carry/$d" "/tmp/$d" || exit 1; fi
  done
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Where the shipped model and the clip library are on this machine: the tree's own, or the copies
# staged above (the stages' defaults; TEACHER/CKPT/LIB override them).
if [ -r checkpoints/lsd_small/params.safetensors ]; then SHIPPED=checkpoints/lsd_small; else SHIPPED=/tmp/teacher; fi
if [ -f .carry/library/manifest.json ]; then LIBRARY=.carry/library/manifest.json; else LIBRARY=/tmp/library/manifest.json; fi
