"""Bringing a catalog in: the ingest pipeline, fetching (with the URL guard) and decoding images.

May import ``collection``, ``search``, the seams and ``types``/``errors``/``settings``."""
