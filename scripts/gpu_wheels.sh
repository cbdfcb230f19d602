# Sourced by the scripts/gpu_*.sh stages: installs the carried wheels (.whl) into /tmp/site, or,
# when none were carried, reuses what an earlier call on the same warm machine installed there.
# The working tree a device call carries is limited to 64 MiB: the wheels (42 MB, PyAV 35 MB of
# them) and the shipped model (39 MB) do not fit together, so carry the wheels in a first call and
# the model (or .carry/ data) in the next one, on the same warm machine. A call that decodes no
# video (e.g. `gpu_eval.sh drift`, procedural streams; PyAV is imported lazily) can instead carry
# every wheel but PyAV's beside the model.
# LSD_WHEELS=skip: the packages are importable already (a development machine's venv, the tests).
if [ "${LSD_WHEELS:-}" = skip ]; then
  :
elif ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
elif [ ! -d /tmp/site/grain ]; then
  echo "no wheels carried in .whl and none installed in /tmp/site by an earlier call"; exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
