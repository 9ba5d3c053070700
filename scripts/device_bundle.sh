#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what loadtests/many_cores.sh needs on a lent machine
# that has Python 3.12 with NumPy, onnxruntime, pyarrow, scikit-learn, matplotlib and
# requests, but no package index and no wrk: the serving path's other packages as
# cp312 wheels, and wrk with its LuaJIT library. About 4 MB; it travels with the
# working tree (`carry: [".device", "models"]`).
#
#   scripts/device_bundle.sh [PYTHON_VERSION]    # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-3.12}
pip=(.venv/bin/python -m pip)
[ -x .venv/bin/python ] || pip=(python3 -m pip)

rm -rf .device
mkdir -p .device/wheels .device/wrk
# What `python -m func` and the benchmarks import that such a machine lacks. cloudevents
# stays at 1.x: the benchmarks use its 1.x modules.
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest .device/wheels \
    --python-version "$version" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    flask==3.1.3 blinker itsdangerous gunicorn==27.0.1 orjson==3.13.0 pysimdjson==7.0.2 \
    cloudevents==1.12.0 deprecation a2wsgi==1.10.10

wrk=$(command -v wrk) || { echo "wrk is not installed here (apt-get install wrk)" >&2; exit 1; }
cp "$wrk" .device/wrk/
# wrk needs glibc 2.14 and OpenSSL 3, which such a machine has, and LuaJIT, which it may not.
luajit=$(ldd "$wrk" | awk '/libluajit/ {print $3}')
[ -n "$luajit" ] && cp -L "$luajit" .device/wrk/
du -sh .device
