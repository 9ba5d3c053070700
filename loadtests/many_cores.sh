#!/usr/bin/env bash
# The runs issue #25 asks of a machine with many cores, in one go (about 4 minutes on 16
# cores): requests per server CPU-second against the bare stack at 2, 4, 8 and 12
# workers, and the batch scaling curve up to every core. On a lent machine with no
# package index, first fill .device/ here (scripts/device_bundle.sh) and carry it with
# the models:
#
#   bash loadtests/many_cores.sh OUT_DIR     # writes startup_many_cores.json and
#                                            # batch_scaling_many_cores.json (+ .png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: loadtests/many_cores.sh OUT_DIR}
mkdir -p "$out"

python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if [ -d .device/wheels ]; then
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/warmstart-site .device/wheels/*.whl
    export PYTHONPATH=/tmp/warmstart-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .device/wrk ]; then
    export PATH=$PWD/.device/wrk:$PATH LD_LIBRARY_PATH=$PWD/.device/wrk${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
[ -f models/model.onnx ] || { echo "models/model.onnx is missing: carry models/ (make model)" >&2; exit 1; }
"$python" -c "import flask, gunicorn, orjson, simdjson, onnxruntime, pyarrow, sklearn, matplotlib"
wrk --version | head -1 || true
echo "cpus: $(nproc), python: $("$python" --version)"

PYTHONUNBUFFERED=1 "$python" loadtests/bench_startup.py --skip-cold --workers 2 4 8 12 --rounds 3 --seconds 3 \
    --out "$out/startup_many_cores.json"
PYTHONUNBUFFERED=1 "$python" loadtests/bench_batch.py --cpus --repeat 1 --out "$out/batch_scaling_many_cores.json"
