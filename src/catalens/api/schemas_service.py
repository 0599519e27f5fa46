"""Response models of the service routes: liveness (``/health``) and readiness (``/ready``)."""

from __future__ import annotations

from catalens.api.schema_base import Model


class ModelEntry(Model):
    """A collection, in the health answer's ``models`` map."""

    name: str
    """The collection's name."""
    products: int
    """Its products."""
    images: int = 0
    """Its embedded catalog images."""
    model: str | None = None
    """Its model."""


class CollectionHealth(Model):
    """A collection, as the health answer lists it."""

    name: str
    """The collection's name."""
    model: str
    """Its model."""
    products: int
    """Its products."""
    images: int
    """Its embedded catalog images."""


class HealthOut(Model):
    """Liveness: the model, the device and the collections."""

    # Merged with the health shapes of seeds 000, 001 and 004 (``available_models``, ...).
    status: str
    """``healthy``; ``degraded`` when the collections cannot be read."""
    version: str
    """The catalens version."""
    ready: bool
    """Whether the models are loaded (``GET /ready`` answers 200)."""
    model: str
    """The default collection's model, else the configured one."""
    device: str
    """Where the models run (``cpu``, ``cuda``)."""
    model_loaded: bool
    """Whether that model is loaded."""
    collections: list[CollectionHealth]
    """The collections with their counts."""
    available_models: int
    """How many collections there are."""
    total_products: int
    """Products in all collections."""
    models: dict[str, ModelEntry]
    """The collections by name."""


class ReadyOut(Model):
    """Readiness: whether the service can search."""

    ready: bool
    """True (a service that is not ready answers 503)."""
    detail: str
    """What is ready, in words."""
