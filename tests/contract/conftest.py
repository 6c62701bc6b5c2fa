"""The store fixtures of the contract suites, from backends.py."""

from .backends import (  # noqa: F401  (fixtures, found by pytest here)
    buses,
    counter_stores,
    job_stores,
    l2_stores,
    registries,
    shared_registries,
    trip_exchanges,
)
