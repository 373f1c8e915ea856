# The two commands: `make reproduce` (main job on the embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= all
# torch/torchvision pinned to the pair that installs on the reference machine; override on others.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv reproduce test test-cluster clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[workflow,test]'
	touch $@

venv: $(VENV)/.installed

reproduce: venv
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html

# the whole suite; as root with apt it includes tests/cluster (a local SLURM, about 4 minutes)
test: venv
	$(VENV)/bin/pytest -q

# only the SLURM tests (tests/cluster/slurm-up.sh + the workflow through profiles/slurm)
test-cluster: venv
	$(VENV)/bin/pytest -q -m cluster tests/cluster

clean:
	rm -rf results .snakemake
