# The two commands: `make run` serves the default model, `make test` runs the tests.
# Both install what they need into .venv first (plain pip, nothing global).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := models/model.onnx
INSTALLED := $(VENV)/.installed

.PHONY: run test lint model clean

run: $(INSTALLED) $(MODEL)
	$(PY) -m func

test: $(INSTALLED) $(MODEL)
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(VENV)/bin/ruff check func scripts tests loadtests

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
