"""What every API model shares: the ``Model`` base (field docstrings become OpenAPI
descriptions), the field rules for untrusted strings, and the error body."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# -- shared field rules ------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> str:
    # A NUL or newline is never part of a file name, URL or id a catalog means: refuse it
    # here rather than let it reach the filesystem or an HTTP client deeper down.
    if _CONTROL.search(value):
        raise ValueError("must not contain a control character (NUL, newline, ...)")
    return value


Printable = Annotated[str, AfterValidator(_printable)]
"""A string without control characters (image refs, source locations, product ids)."""


def _routable_id(value: str) -> str:
    # Ids may hold '/' (``gid://shopify/Product/1``): the product routes take the rest of the
    # path. A 'views' segment after a '/' would read as the product's views route instead.
    if "views" in value.split("/")[1:]:
        raise ValueError("must not have 'views' as a path segment after a '/'")
    return value


ProductId = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_printable)]
"""The id of an existing product, as the feedback route names it."""
NewProductId = Annotated[ProductId, AfterValidator(_routable_id)]
"""The id of a product being added: reachable by every product route."""
FilterScalar = str | int | float | bool | None
FilterValue = FilterScalar | list[FilterScalar]
"""One metadata filter: a value to match exactly, or a list of values (any of them)."""


class Model(BaseModel):
    """The base of every API model: field docstrings become OpenAPI descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class ErrorBody(Model):
    """The body of every error answer (4xx and 5xx)."""

    error: str
    """A short, stable code: ``validation_error``, ``collection_not_found``, ..."""
    detail: str
    """What went wrong, in words."""
