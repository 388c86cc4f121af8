# The two set-up commands of the README: `make demo` and `make test`. Each creates the virtual
# environment (Python 3.10, for Lava) and installs the project into it when missing or stale.
VENV   ?= .venv
PYTHON  = $(VENV)/bin/python
STAMP   = $(VENV)/.snn2hw-installed

.PHONY: demo test test-fast soak bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || "$$(tools/find-python310.sh)" -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[lava,test,nir-producers]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snn2hw demo --out out/demo

# One pytest worker per CPU (pytest-xdist): much of the suite is subprocesses (CLI, Lava, torchrun).
test: $(STAMP)
	$(PYTHON) -m pytest -q -n auto --dist worksteal

test-fast: $(STAMP)
	$(PYTHON) -m pytest -q -m "not lava and not slow"

soak: $(STAMP)
	SNN2HW_SOAK=1 $(PYTHON) -m pytest -q -m soak

clean:
	rm -rf out build *.egg-info .pytest_cache
