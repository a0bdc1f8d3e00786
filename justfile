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

# what CI runs
ci:
    bash .ci/run
