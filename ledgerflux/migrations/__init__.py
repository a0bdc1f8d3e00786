"""Versioned SQL migrations for :mod:`ledgerflux.store`.

Each ``NNNN_name.sql`` file is applied once, in version order, inside its own transaction,
under a PostgreSQL advisory lock (see :func:`ledgerflux.store.open_store`). A file never
changes once released; a schema change is a new file.
"""
