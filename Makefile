# `make demo` and `make test` create .venv (the project installed editable, with its dev extra)
# when it is missing or pyproject.toml changed, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench paper experiments results lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/jaxopt-ft --config=configs/mnist1d_compress.py --workdir=runs/demo
	cat runs/demo/report.md

test: $(STAMP)  # three workers (CLI tests wait on subprocesses), one test file each at a time
	$(PY) -m pytest -n 3 --dist loadfile

bench: $(STAMP)
	scripts/benchmarks.sh

paper: $(STAMP)
	scripts/paper_table.sh

experiments: $(STAMP)  # every config and the paper table, two at a time
	scripts/experiments.sh

results: bench experiments  # then regenerate the README's Results section
	$(PY) scripts/update_readme.py

lint: $(STAMP)
	$(VENV)/bin/ruff format --check jaxopt_ft tests configs benchmarks scripts
	$(VENV)/bin/ruff check jaxopt_ft tests configs benchmarks scripts

clean:
	rm -rf $(VENV) runs
