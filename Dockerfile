# syntax=docker/dockerfile:1
# warmstart: the function image. Build: docker build -t REGISTRY/warmstart:1 .
# The retraining job's image: docker build --target trainer -t REGISTRY/warmstart-trainer:1 .
# scripts/build_images.sh builds every target with podman (the image tests run them).

# Every stage's base. scripts/build_images.sh passes an equivalent made from Debian's
# packages where no registry is reachable (see its comment).
ARG BASE=python:3.11-slim

# --- train: the default model, made with the training libraries that never reach the image
FROM ${BASE} AS train
WORKDIR /src
COPY requirements.txt requirements-sklearn.txt requirements-stores.txt requirements-train.txt ./
RUN pip install --no-cache-dir -r requirements-train.txt
COPY func/ func/
# the two scripts training runs, so a change to another script keeps this stage's cache
COPY scripts/train.py scripts/export_onnx.py scripts/
RUN python scripts/train.py --out models/model.onnx

# --- trainer: the retraining job a JobSink runs (knative/retrain); its parent model by
# default is the one made above. Bring your own trainer by building FROM this image,
# copying your module in and setting TRAINER=module:function.
FROM train AS trainer
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin warmstart
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_PATH=/src/models/model.onnx
USER 10001
ENTRYPOINT ["python", "-m", "func.retrain"]

# --- runtime deps in a venv, so the final stage copies one folder and no build tools.
# scripts/prune_venv.sh then removes what no serving process loads (measured by
# loadtests/loaded_libs.py): pip, setuptools, tests, headers, Arrow Flight and pyarrow's
# S3 client, its Dataset, Acero and Substrait libraries (scripts/prune_arrow.py, with
# patchelf), onnxruntime's C API library and model tools, NumPy's unused subpackages,
# symbol tables (binutils' strip), bytecode (the stages below compile what is imported).
FROM ${BASE} AS deps
RUN apt-get update && apt-get install -y --no-install-recommends binutils patchelf && rm -rf /var/lib/apt/lists/*
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
RUN /venv/bin/pip install --no-cache-dir --no-compile -r /tmp/requirements.txt
COPY scripts/prune_venv.sh scripts/prune_arrow.py /tmp/
RUN bash /tmp/prune_venv.sh /venv

# --- which of the venv's modules the server imports (scripts/compile_imported.py). The
# list changes only when func's imports do, so the venv stage below stays cached (and its
# layer the same) across changes to func/ that import nothing new.
FROM deps AS imports
WORKDIR /app
COPY func/ func/
COPY scripts/compile_imported.py /tmp/compile_imported.py
RUN /venv/bin/python /tmp/compile_imported.py --list /imported.txt

# --- the venv as shipped: the modules the server imports as bytecode alone (a read-only
# root cannot cache bytecode; the sources would be 5.9 MB more)
FROM deps AS venv
COPY scripts/compile_imported.py /tmp/compile_imported.py
COPY --from=imports /imported.txt /tmp/imported.txt
RUN /venv/bin/python /tmp/compile_imported.py --sourceless /tmp/imported.txt

# --- the rollout job (knative/rollout/): python -m func.rollout, no model, no onnxruntime.
# Build: docker build --target rollout -t REGISTRY/warmstart-rollout:1 .
FROM ${BASE} AS rollout
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin warmstart
COPY requirements-rollout.txt /tmp/rollout-requirements.txt
RUN pip install --no-cache-dir -r /tmp/rollout-requirements.txt
WORKDIR /app
COPY func/ func/
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
ENTRYPOINT ["python", "-m", "func.rollout"]

# --- the image: runtime deps, the function, the model; no compiler, no scikit-learn
FROM ${BASE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin warmstart
COPY --from=venv /venv /venv
WORKDIR /app
COPY func/ func/
# Bytecode for the modules of func/ the server imports: the read-only root cannot cache
# it, so each start would compile it; what is never imported needs none.
RUN --mount=type=bind,source=scripts/compile_imported.py,target=/tmp/compile_imported.py \
    /venv/bin/python /tmp/compile_imported.py
COPY --from=train /src/models/model.onnx models/model.onnx
# the same trees as mapped arrays: the server answers from them while onnxruntime starts
COPY --from=train /src/models/model.forest models/model.forest
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    MODEL_PATH=/app/models/model.onnx
USER 10001
EXPOSE 8080
# exec form: the server is PID 1 and receives SIGTERM itself
ENTRYPOINT ["python", "-m", "func"]
