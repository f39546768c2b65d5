# chemomech: every target runs inside the project environment (scripts/in-env),
# which builds the Debian sid root with DOLFINx 0.11 on first use.
IN_ENV := scripts/in-env
NP ?= 2

.PHONY: env demo test test-serial test-mpi bench lint docs notebooks clean-results container-test

env:            ## build (or reuse) the environment and print its versions
	$(IN_ENV) python3 -c "import dolfinx, dolfinx_adjoint, sys; print('dolfinx', dolfinx.__version__, '| python', sys.version.split()[0])"

demo:           ## run the main job on the bundled default data, results under results/
	$(IN_ENV) python3 -m chemomech demo --output results/demo

test:           ## pytest, then the tests marked `mpi` under mpirun -n $(NP)
	$(IN_ENV) bash scripts/run-tests $(NP)

test-serial:
	$(IN_ENV) bash scripts/run-tests 0

bench:          ## benchmarks, JSON under bench/results/
	$(IN_ENV) bash -c 'for b in bench/*.py; do echo "== $$b"; python3 $$b || exit 1; done'

docs:           ## the HTML user guide (Sphinx, warnings are errors) -> build/docs/html/index.html
	$(IN_ENV) python3 -m sphinx -W --keep-going -q -b html docs build/docs/html

notebooks:      ## re-pair notebooks/*.ipynb (no outputs) with their reviewed .py sources
	$(IN_ENV) python3 -m jupytext --sync notebooks/[0-9][0-9]_*.py

lint:
	$(IN_ENV) ruff check chemomech tests scripts bench forms meshes notebooks docs

container-test: ## podman: build the Dockerfile, run make test inside with ../shared (not in CI, ~7 min)
	bash scripts/container-test $(CONTAINER_TEST_ARGS)

clean-results:
	rm -rf results
