# LedgerFlux recipes. `just --list` shows them all.
uv := "python3 -m uv"

# run the whole pipeline on embedded defaults, replaying the bundled recording
up *ARGS:
    {{uv}} run ledgerflux up {{ARGS}}

# the full test suite (unit, property, integration on real servers, e2e, browser)
test *ARGS:
    {{uv}} run pytest {{ARGS}}

# only the fast in-memory tests
test-unit *ARGS:
    {{uv}} run pytest tests/unit {{ARGS}}

lint:
    {{uv}} run ruff check .
    {{uv}} run ruff format --check .

fmt:
    {{uv}} run ruff format .
    {{uv}} run ruff check --fix .

typecheck:
    {{uv}} run mypy

# all benchmarks, each against its baseline measured in the same run
bench *ARGS:
    {{uv}} run ledgerflux bench bus {{ARGS}}
    {{uv}} run ledgerflux bench codec {{ARGS}}
    {{uv}} run ledgerflux bench decode {{ARGS}}
    {{uv}} run ledgerflux bench gateway {{ARGS}}
    {{uv}} run ledgerflux bench store {{ARGS}}
    {{uv}} run ledgerflux bench startup {{ARGS}}
    {{uv}} run ledgerflux bench pipeline {{ARGS}}

# the chaos suite: faults against the whole pipeline (10 rounds per fault), prints the table
chaos *ARGS:
    {{uv}} run python -m ledgerflux.testing.chaos {{ARGS}}

# the chaos suite's short form, as CI runs it (3 rounds per fault, short outages)
chaos-short *ARGS:
    {{uv}} run pytest -m chaos tests/chaos -s {{ARGS}}

# the wheels of the application and of the Coinbase plugin, in dist/
build:
    {{uv}} build --wheel
    {{uv}} build --wheel plugins/coinbase -o dist

# the one container image for every daemon (ENGINE=docker works too)
image ENGINE="podman" TAG="ledgerflux:0.1.0":
    {{ENGINE}} build -t {{TAG}} -f Containerfile .

# the deploy files' checks: wheels, image, workflow, k8s overlays, systemd units
test-ops *ARGS:
    {{uv}} run pytest tests/ops {{ARGS}}

# what CI runs
ci:
    bash .ci/run
