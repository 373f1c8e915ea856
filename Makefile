# The two commands: `make reproduce` (main job on the embedded default) and `make test` (lint first).
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
# torch/torchvision pinned to the pair that installs on the reference machine; override on others.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv reproduce lint test test-cluster test-configs clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[workflow,test]'
	touch $@

venv: $(VENV)/.installed

# bytecode written once here: with PYTHONDONTWRITEBYTECODE set (as on the reference machine) every
# job would otherwise compile the package again (about 0.1 s of each of the grid's ~60 processes)
reproduce: venv
	$(PY) -m compileall -q cct analysis
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html

# ruff (pyflakes, pycodestyle errors, isort, bugbear; pyproject.toml) and snakefmt on the rule files
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/

# the whole suite; as root with apt it includes tests/cluster (a local SLURM, about 4 minutes)
test: lint
	$(VENV)/bin/pytest -q

# only the SLURM tests (tests/cluster/slurm-up.sh + the workflow through profiles/slurm)
test-cluster: venv
	$(VENV)/bin/pytest -q -m cluster tests/cluster

# the tiny configs of .test/config/ (those the workflow tests run), each for real in .test/<name>/
test-configs: venv
	for config in .test/config/*.yaml; do \
		name=$$(basename $$config .yaml); mkdir -p .test/$$name; \
		$(VENV)/bin/snakemake --cores $(CORES) --directory .test/$$name --configfile $$config || exit 1; \
	done

clean:
	rm -rf results .snakemake
