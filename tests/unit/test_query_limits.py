"""What one query may cost the service (issue 13.2 and 13.6): the pixels it decodes, the
pixels decoded at once by every query together, and a model load that holds up no search.

All on a real service over the fake embedder (``tests/fakes.py``) and real images.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from catalens.errors import BusyError, ImageTooLargeError
from catalens.ingest.decode import PixelBudget, decode_image
from catalens.service.service import CatalensService
from catalens.service.trusted import TRUSTED_REFS
from catalens.types import Product
from fakes import FakeEmbedder, fake_settings


def _png(size: tuple[int, int], colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 200)).save(buffer, format="JPEG", quality=60)
    return buffer.getvalue()


def _shop(service: CatalensService, tmp_path: Path, name: str = "shop") -> CatalensService:
    """``name``: one product with one small red image."""
    image = tmp_path / f"{name}.png"
    image.write_bytes(_png((64, 64)))
    service.create_collection(name, trusted=TRUSTED_REFS)
    service.upsert_products(name, [Product("p1", "Red", (str(image),))], trusted=TRUSTED_REFS)
    return service


# -- the query pixel limit ---------------------------------------------------------------


def test_a_query_may_decode_fewer_pixels_than_a_catalog_image(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> None:
    shop = _shop(make_fake_service(), tmp_path)
    assert shop.settings.max_query_pixels < shop.settings.max_image_pixels
    bomb = _png((7000, 7000))  # about 143 KB, 49 MP: under the 50 MP catalog limit
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLargeError) as info:
        shop.search("shop", image=bomb)
    assert "over the limit of 25000000" in str(info.value)
    # The same picture is still a valid catalog image (the catalog limit applies there).
    assert decode_image(bomb, source="catalog", limits=shop.limits).size == (7000, 7000)


def test_a_large_jpeg_query_counts_the_pixels_its_reduced_decode_makes(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> None:
    shop = _shop(make_fake_service(max_query_pixels=2_000_000), tmp_path)
    phone_photo = _jpeg((4000, 3000))  # 12 MP claimed; decoded at 1/8 scale for the model
    assert shop.search("shop", image=phone_photo, top_k=1)[0].product_id == "p1"
    with pytest.raises(ImageTooLargeError):
        shop.search("shop", image=_png((2000, 1500)))  # a PNG decodes all its 3 MP


# -- the budget of pixels in flight -------------------------------------------------------


def test_a_query_over_the_budget_in_flight_is_refused_as_busy(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> None:
    shop = _shop(make_fake_service(decode_pixel_budget=3_000_000, decode_wait_seconds=0), tmp_path)
    photo = _png((2000, 1000), (200, 40, 40))  # 2 MP
    assert shop.search("shop", image=photo, top_k=1)[0].product_id == "p1"
    with shop.decode_budget.hold(2_000_000, source="another query"):
        with pytest.raises(BusyError) as info:
            shop.search("shop", image=photo)
        assert info.value.retry_after > 0
        # What fits beside it still runs.
        assert shop.search("shop", image=_png((500, 500)), top_k=1)[0].product_id == "p1"
    assert shop.decode_budget.in_flight == 0
    assert shop.search("shop", image=photo, top_k=1)[0].product_id == "p1"


def test_a_query_waits_for_room_in_the_budget_when_it_comes_in_time() -> None:
    budget = PixelBudget(1000, wait=60)
    decoded: list[tuple[int, int]] = []
    holding = budget.hold(800, source="first")
    holding.__enter__()

    def second() -> None:
        decoded.append(decode_image(_png((30, 30)), source="second", budget=budget).size)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and not decoded  # 800 + 900 pixels do not fit in 1000
    holding.__exit__(None, None, None)
    thread.join(60)
    assert decoded == [(30, 30)]
    assert budget.in_flight == 0


def test_the_budget_admits_what_fits_refuses_the_rest_and_runs_a_giant_alone() -> None:
    budget = PixelBudget(2_000_000, wait=0)
    with budget.hold(1_000_000, source="a"), budget.hold(1_000_000, source="b"):
        assert budget.in_flight == 2_000_000
        refused = pytest.raises(BusyError, match="c: the server is decoding 2000000 pixels")
        with refused, budget.hold(1, source="c"):
            pass
    with budget.hold(9_000_000, source="giant"):  # larger than the budget: alone
        assert budget.in_flight == 2_000_000
    assert budget.in_flight == 0


# -- a slow model load holds up no search -------------------------------------------------


def test_creating_a_collection_whose_model_loads_slowly_blocks_no_other_search(
    tmp_path: Path,
) -> None:
    shared = FakeEmbedder()
    loading = threading.Event()
    release = threading.Event()

    def load(spec: str) -> FakeEmbedder:
        if spec == "slow-model":  # a hub that keeps retrying
            loading.set()
            release.wait(120)
        return shared

    settings = fake_settings(tmp_path / "home")
    settings.home.mkdir(parents=True)
    service = CatalensService(settings, embedder_loader=load)
    try:
        _shop(service, tmp_path)
        created = threading.Thread(
            target=service.create_collection, args=("other",), kwargs={"model": "slow-model"}
        )
        created.start()
        assert loading.wait(30)
        found: list[str] = []
        search = threading.Thread(
            target=lambda: found.extend(
                hit.product_id for hit in service.search("shop", image=_png((64, 64)), top_k=1)
            )
        )
        search.start()
        # The load never ends until released: a search that waited on it would still run.
        search.join(30)
        done_while_loading = not search.is_alive() and created.is_alive()
        release.set()
        search.join(60)
        created.join(60)
        assert done_while_loading, "the search waited for the other collection's model load"
        assert found == ["p1"]
        assert "other" in service.collection_names()
    finally:
        release.set()
        service.close()
