"""Simulated untrusted feedback: honest shoppers without a key, and a poisoning attack.

``catalens eval --feedback-trust keyless`` sends the feedback curve's confirmed photos as
keyless verdicts, each from a client of its own (honest shoppers are many people), so they
apply only as ``feedback/trust.py`` allows. ``--poison N`` first sends N keyless ``actually``
verdicts that file pool photos under a WRONG product, all from one attacking client or, with
``--poison-clients``, spread over that many (an attacker with many addresses):
``--poison-target random`` picks any other product (seeded), ``nearest`` the best-ranked wrong
product for the photo (the one a model-agreement check is weakest against).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from catalens.errors import CatalensError, ConfigError
from catalens.eval.evaluate import Query
from catalens.feedback.trust import TRUSTED, Trust
from catalens.ingest.decode import content_hash
from catalens.service.service import CatalensService
from catalens.service.trusted import TrustedPath

TrustMode = Literal["keyed", "keyless"]
PoisonTarget = Literal["random", "nearest"]
_ATTACKER = "attacker"


@dataclass(frozen=True)
class FeedbackPlan:
    """How the simulated feedback is sent."""

    trust: TrustMode = "keyed"
    """``keyed``: every verdict trusted (as with a key); ``keyless``: untrusted, one client
    per verdict."""
    poison: int = 0
    """Attack verdicts sent before the honest ones (always keyless)."""
    poison_target: PoisonTarget = "random"
    poison_clients: int = 1
    poison_keyed: bool = False
    """Send the attack with a key (trusted): every verdict applies, as all feedback did
    before ``feedback/trust.py``."""

    def __post_init__(self) -> None:
        if self.trust not in ("keyed", "keyless"):
            raise ConfigError(f"--feedback-trust is keyed or keyless, not {self.trust!r}")
        if self.poison_target not in ("random", "nearest"):
            raise ConfigError(f"--poison-target is random or nearest, not {self.poison_target!r}")
        if self.poison < 0 or self.poison_clients < 1:
            raise ConfigError("--poison must be >= 0 and --poison-clients >= 1")

    def honest_trust(self, index: int) -> Trust:
        """The trust of the ``index``-th honest verdict."""
        return TRUSTED if self.trust == "keyed" else Trust(False, f"shopper-{index}")


@dataclass(frozen=True)
class PoisonReport:
    sent: int
    """Attack verdicts sent."""
    applied: int
    """Attack photos that are, at the end, confirmed photos of the wrong product."""


def attack(
    service: CatalensService,
    collection: str,
    pool: Sequence[Query],
    plan: FeedbackPlan,
    *,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Send ``plan.poison`` keyless ``actually`` verdicts filing pool photos under a wrong
    product; the (photo content hash, wrong product) pairs sent."""
    if plan.poison <= 0:
        return []
    product_ids = sorted(service.collection(collection).ledger.product_ids())
    photos = [q for q in pool if len(q.item_ids) == 1 and q.item_ids <= set(product_ids)]
    rng = random.Random(f"{seed}:poison")
    chosen = rng.sample(photos, min(plan.poison, len(photos)))
    sent: list[tuple[str, str]] = []
    for index, photo in enumerate(chosen):
        (right,) = photo.item_ids
        wrong = _wrong_product(service, collection, photo, right, product_ids, plan, rng)
        client = f"{_ATTACKER}-{index % plan.poison_clients}"
        try:
            data = photo.image.read_bytes()
            service.feedback(
                collection,
                image=TrustedPath(photo.image),
                verdict="actually",
                product_id=wrong,
                user="attacker",
                recalibrate=False,
                trust=TRUSTED if plan.poison_keyed else Trust(False, client),
            )
        except (CatalensError, OSError):
            continue
        sent.append((content_hash(data), wrong))
    return sent


def poison_report(
    service: CatalensService, collection: str, sent: list[tuple[str, str]]
) -> PoisonReport:
    """How many attack photos ended up as confirmed photos of their wrong product."""
    confirmed = {
        (row.content_hash, row.product_id)
        for row in service.collection(collection).ledger.confirmed_photos()
    }
    return PoisonReport(sent=len(sent), applied=sum(pair in confirmed for pair in sent))


def _wrong_product(
    service: CatalensService,
    collection: str,
    photo: Query,
    right: str,
    product_ids: list[str],
    plan: FeedbackPlan,
    rng: random.Random,
) -> str:
    if plan.poison_target == "nearest":
        hits = service.search(collection, image=TrustedPath(photo.image), top_k=5, observe=False)
        for hit in hits:
            if hit.product_id != right:
                return hit.product_id
    return rng.choice([p for p in product_ids if p != right])


__all__ = ["FeedbackPlan", "PoisonReport", "attack", "poison_report"]
