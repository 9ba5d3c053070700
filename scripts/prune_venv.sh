#!/usr/bin/env bash
# Shrink the serving image's virtualenv (the Dockerfile's `deps` stage runs this):
#   scripts/prune_venv.sh VENV
# Each cut is something no serving process uses, measured, not guessed:
# loadtests/loaded_libs.py starts the server on this environment, sends it every protocol
# and a batch job from and to each format, and lists the shared libraries that neither the
# master nor a worker ever mapped (/proc/PID/maps). The image tests then run all of that
# work in the pruned image (tests/test_images.py).
set -euo pipefail

venv="${1:?usage: prune_venv.sh VENV}"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# pip and setuptools install, they never serve: the image installs nothing at run time.
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools

# Test suites, C/C++ headers, Cython sources and type stubs: for testing, building and
# type-checking the packages.
find "$site" -depth -type d -name tests -exec rm -rf {} +
find "$site" -name '*_tests.cpython-*.so' -delete
rm -rf "$site/pyarrow/include" "$site/pyarrow/includes" "$site/pyarrow/src" "$site/numpy/_core/include"
find "$site" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.cpp' -o -name '*.h' \
  -o -name '*.pyi' -o -name py.typed \) -delete

# pyarrow: Arrow Flight (RPC) is never loaded. pyarrow's own S3 client is loaded (by
# pyarrow.parquet -> pyarrow.fs) but never used: func reads and writes through fsspec,
# and pyarrow.fs imports _s3fs inside try/except ImportError, made for builds without S3.
# Parquet, CSV, JSON and compute stay; Dataset, Acero and Substrait go below (prune_arrow.py).
rm -f "$site"/pyarrow/libarrow_flight.so* "$site"/pyarrow/libarrow_python_flight.so* \
  "$site"/pyarrow/_flight.cpython-*.so "$site"/pyarrow/flight.py "$site"/pyarrow/__pycache__/flight.* \
  "$site"/pyarrow/libarrow_s3.so* "$site"/pyarrow/_s3fs.cpython-*.so
# Feather, ORC and Parquet encryption: never loaded (loaded_libs.py), no job reads them.
rm -f "$site"/pyarrow/{_feather,_orc,_parquet_encryption}.cpython-*.so "$site"/pyarrow/{feather,orc}.py \
  "$site"/pyarrow/libarrow_python_parquet_encryption.so* "$site"/pyarrow/parquet/encryption.py
# A wheel cannot hold symbolic links, so pyarrow ships libX.so, libX.so.2600 and
# libX.so.2600.1.0 as three copies; the loader maps libX.so.2600 (the soname). The
# other names become links to it.
"$venv/bin/python" - "$site/pyarrow" <<'EOF'
import filecmp, os, re, sys

folder = sys.argv[1]
names = os.listdir(folder)
for name in names:
    match = re.fullmatch(r"(lib.+?\.so)(\.\d+)*", name)
    sonames = [n for n in names if match and re.fullmatch(re.escape(match[1]) + r"\.\d+", n)]
    if len(sonames) == 1 and name != sonames[0]:
        path, soname = os.path.join(folder, name), os.path.join(folder, sonames[0])
        if not os.path.islink(path) and filecmp.cmp(path, soname, shallow=False):
            os.remove(path)
            os.symlink(sonames[0], path)
EOF

# onnxruntime: the Python binding (onnxruntime_pybind11_state) carries the runtime itself;
# libonnxruntime.so is the C API library for other languages and is never loaded.
rm -f "$site"/onnxruntime/capi/libonnxruntime.so*
# Subpackages no serving process imports (-X importtime): onnxruntime's model tools
# (quantization, transformers, tools, datasets, backend) and NumPy's build tools (f2py,
# distutils, the PyInstaller hook, the type-checker plugin).
rm -rf "$site"/onnxruntime/{backend,datasets,quantization,tools,transformers} \
  "$site"/numpy/{f2py,distutils,_pyinstaller,typing,fft,polynomial,testing}
# protobuf: onnxruntime requires it for the model tools removed above; the runtime it
# serves with never imports it, nor does func (it reads ONNX itself, func/model/onnx_reader.py,
# and writes OTLP itself, func/observe/otlp_encoding.py).
rm -rf "$site"/google/protobuf "$site"/google/_upb "$site"/protobuf-*.dist-info
rmdir "$site"/google 2>/dev/null || true
# NumPy's own test modules (the SIMD dispatch probe and the C-API test module), never loaded.
rm -f "$site"/numpy/_core/{_simd,_multiarray_tests}.cpython-*.so
# tzdata: the IANA zone files python-dateutil (the cloudevents SDK's) falls back to where the
# system has none. No serving path names a zone: event times carry UTC offsets.
rm -rf "$site"/tzdata "$site"/tzdata-*.dist-info
rm -f "$venv/bin/f2py" "$venv/bin/numpy-config" "$venv/bin/onnxruntime_test"

# Symbol tables and debug information: pyarrow's libraries ship with theirs (libarrow.so
# alone 48.7 MB, 38.7 MB without), pysimdjson's extension with its debug information
# (7.5 MB, 0.6 MB without). --strip-unneeded keeps the dynamic symbols the loader links
# against. Not the libraries auditwheel rewrote with patchelf, the bundled ones in
# *.libs/ and the extensions whose RPATH points there: strip breaks them (NumPy's OpenBLAS
# then fails to load: "ELF load command address/offset not page-aligned").
find "$site" -path "$site/*.libs" -prune -o -name '*.so*' -type f -print | while read -r lib; do
  if ! readelf -d "$lib" | grep -E 'R(UN)?PATH' | grep -q '\.libs'; then
    strip --strip-unneeded "$lib"
  fi
done

# pyarrow's Dataset, Acero and Substrait libraries: linked by every pyarrow module, called
# by none that func imports (checked symbol by symbol; after strip, which would undo the
# relinking). The script sits beside this one.
"$venv/bin/python" "$(dirname "$0")/prune_arrow.py" "$site"

# Bytecode: none here. The image's last stage writes it for exactly the modules the
# server imports (scripts/compile_imported.py): a read-only root cannot cache it, and 8.5
# of the 15 MB pip compiled was for modules no serving process imports.
find "$venv" -type d -name __pycache__ -prune -exec rm -rf {} +
