"""A self-made sample catalog (rendered packs and simulated shopper photos) for the demo and tests.

Depends only on Pillow, numpy and ``errors``."""
