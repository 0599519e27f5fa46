"""Ranking math: query crops, domain centering, product scoring and calibration.

May import the seams (``ledger``, ``embedders``) and ``types``/``errors``/``settings``; never a
collection.
"""
