"""Root conftest: the project's shared pytest fixtures (real servers, started embedded)."""

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "ledgerflux.testing.nats_fixtures",
    "ledgerflux.testing.pg_fixtures",
    "ledgerflux.testing.s3_fixtures",
]

# Shared 2-core machines make generation and example times swing: timing is for
# benchmarks, never a reason for a property test to fail.
settings.register_profile("ledgerflux", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ledgerflux")
