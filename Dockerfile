# syntax=docker/dockerfile:1
# warmstart: the function image. Build: docker build -t REGISTRY/warmstart:1 .
# The retraining job's image: docker build --target trainer -t REGISTRY/warmstart-trainer:1 .

# --- train: the default model, made with the training libraries that never reach the image
FROM python:3.11-slim AS train
WORKDIR /src
COPY requirements.txt requirements-sklearn.txt requirements-stores.txt requirements-train.txt ./
RUN pip install --no-cache-dir -r requirements-train.txt
COPY func/ func/
COPY scripts/ scripts/
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

# --- runtime deps in a venv, so the final stage copies one folder and no build tools
FROM python:3.11-slim AS deps
RUN python -m venv /venv
COPY requirements.txt /tmp/requirements.txt
RUN /venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# --- the rollout job (knative/rollout/): python -m func.rollout, no model, no onnxruntime.
# Build: docker build --target rollout -t REGISTRY/warmstart-rollout:1 .
FROM python:3.11-slim AS rollout
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin warmstart
COPY requirements-rollout.txt /tmp/rollout-requirements.txt
RUN pip install --no-cache-dir -r /tmp/rollout-requirements.txt
WORKDIR /app
COPY func/ func/
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
ENTRYPOINT ["python", "-m", "func.rollout"]

# --- the image: runtime deps, the function, the model; no compiler, no scikit-learn
FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin warmstart
COPY --from=deps /venv /venv
WORKDIR /app
COPY func/ func/
COPY --from=train /src/models/model.onnx models/model.onnx
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    MODEL_PATH=/app/models/model.onnx
USER 10001
EXPOSE 8080
# exec form: the server is PID 1 and receives SIGTERM itself
ENTRYPOINT ["python", "-m", "func"]
