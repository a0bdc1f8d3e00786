"""Root conftest: the project's shared pytest fixtures (real servers, started embedded)."""

pytest_plugins = [
    "ledgerflux.testing.nats_fixtures",
    "ledgerflux.testing.pg_fixtures",
    "ledgerflux.testing.s3_fixtures",
]
