"""A collection: one catalog, one model, one vector index, kept consistent with each other.

The collection object, its config, locks and the calibration refit policy. May import
``search``, the seams (``ledger``, ``stores``, ``embedders``) and ``types``/``errors``/``settings``.
"""
