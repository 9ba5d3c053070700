# The two commands: `make run` serves the default model, `make test` runs the tests.
# Both install what they need into .venv first (plain pip, nothing global).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := models/model.onnx
INSTALLED := $(VENV)/.installed

.PHONY: run test fuzz lint model loop clean

run: $(INSTALLED) $(MODEL)
	$(PY) -m func

test: $(INSTALLED) $(MODEL)
	$(PY) -m pytest -q

# The fuzzers of `make test` with a large budget: FUZZ_SEED=<seed> replays a run.
FUZZ_EXAMPLES ?= 300
fuzz: $(INSTALLED) $(MODEL)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_PHASES=examples,coverage,fuzzing,stateful $(PY) -m pytest -q tests/api/test_fuzz.py

# The whole loop on this machine (needs Debian's prometheus): drift, retraining, canary,
# promotion; LOOP_ARGS=--quick for the short run, --scenario worse for a bad trainer.
LOOP_ARGS ?=
loop: $(INSTALLED) $(MODEL)
	$(PY) scripts/loop.py $(LOOP_ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check func scripts tests loadtests
	$(VENV)/bin/lint-imports

model: $(INSTALLED)
	$(PY) scripts/train.py --out $(MODEL)

# Retrained when the scripts change (the export stores what explanations need).
$(MODEL): scripts/train.py scripts/export_onnx.py | $(INSTALLED)
	$(PY) scripts/train.py --out $(MODEL)

$(INSTALLED): requirements.txt requirements-sklearn.txt requirements-stores.txt requirements-train.txt requirements-rollout.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) $(MODEL)
