# Two-command start:  make install  then  make run   (make test runs the test suite).
# The same steps by hand are in README.md (Install, Quick start, Tests).
PYTHON ?= python3
VENV ?= .venv
GLUE ?= ../shared/data/glue
TASK ?= rte
TABLES ?= $(notdir $(patsubst %/manifest.json,%,$(wildcard kdenv/tables/*/manifest.json)))
ALGOS ?= a2c ppo dqn
TUNE_ARGS ?=
BIN = $(VENV)/bin

.PHONY: install run test table-study help

help:
	@echo "make install        virtual environment in $(VENV), torch (CPU build here), kdenv with its extras"
	@echo "make run [TASK=rte] the main job: A2C learns a knowledge schedule (teacher fine-tuned first if missing)"
	@echo "make test           the test suite on the GLUE files in GLUE=$(GLUE)"
	@echo "make table-study [TABLES='$(TABLES)'] [ALGOS='a2c ppo dqn']"
	@echo "                    tune each algorithm on each shipped table's train seeds, then default vs tuned"
	@echo "                    on the held-out seed (agents/tune_table.py; resumable; runs/tables/<task>/tune_<algo>);"
	@echo "                    make -j2 table-study runs two studies at a time; TUNE_ARGS='--trials 20' passes"
	@echo "                    options to every study (python agents/tune_table.py --help)"

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[test,ray,zoo]"

run:
	KDENV_GLUE_DIR=$(GLUE) $(BIN)/python agents/train_a2c.py --task $(TASK)

test:
	KDENV_GLUE_DIR=$(GLUE) $(BIN)/python -m pytest -q

# One study per table and algorithm, each its own target, so that `make -j2 table-study` runs two
# at a time (each uses one torch thread). Not .PHONY: make skips pattern rules for phony targets;
# no file of these names exists, so they always run (and tune_table.py resumes finished work).
STUDIES = $(foreach table,$(TABLES),$(foreach algo,$(ALGOS),study/$(table)/$(algo)))

table-study: $(STUDIES)

study/%:
	$(BIN)/python agents/tune_table.py --algo $(notdir $*) --table $(patsubst %/,%,$(dir $*)) \
	  --output-dir runs/tables/$(patsubst %/,%,$(dir $*))/tune_$(notdir $*) --no-progress $(TUNE_ARGS)
