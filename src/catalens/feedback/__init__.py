"""The feedback loop: verdicts on results, confirmed photos and hard negatives.

May import ``ingest`` (decoding), ``collection``, ``search`` and everything below them."""
