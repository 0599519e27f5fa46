"""Measuring retrieval: recall/MRR over a queries file and the simulated feedback curve.

A client of the service: may import ``service`` and everything below it."""
