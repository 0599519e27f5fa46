"""Example bodies the OpenAPI document shows for the main requests and their answers."""

from __future__ import annotations

from pydantic import JsonValue

SEARCH_REQUEST: list[JsonValue] = [
    {"image_url": "https://shop.example/photos/cart-1.jpg", "top_k": 5},
    {"text": "oat milk", "top_k": 3, "filters": {"category": ["dairy", "drinks"]}},
]

SEARCH_RESPONSE: list[JsonValue] = [
    {
        "collection": "shop",
        "results": [
            {
                "rank": 1,
                "product_id": "8412",
                "title": "Oat milk 1 l",
                "score": 0.8123,
                "image": "https://shop.example/img/8412-front.jpg",
                "image_url": "https://shop.example/img/8412-front.jpg",
                "metadata": {"category": "drinks"},
                "collection": "shop",
                "verdict": "match",
                "probability": 0.94,
            }
        ],
        "took_ms": 41.7,
        "query_id": "q_5f0c2a9e",
    }
]

FEEDBACK_REQUEST: list[JsonValue] = [
    {"query_id": "q_5f0c2a9e", "verdict": "correct", "product_id": "8412"},
    {"query_id": "q_5f0c2a9e", "verdict": "actually", "product_id": "8415"},
]

FEEDBACK_RESPONSE: list[JsonValue] = [
    {
        "collection": "shop",
        "verdict": "correct",
        "product_id": "8412",
        "query_id": "q_5f0c2a9e",
        "view": {
            "view_id": 17,
            "product_id": "8412",
            "verdict": "correct",
            "created_at": 1764169200.0,
            "user": None,
            "query_id": "q_5f0c2a9e",
            "url": "http://127.0.0.1:8000/v1/collections/shop/images/17",
        },
        "added": True,
        "removed_views": [],
        "negative_id": None,
        "recalibrated": False,
        "applied": True,
        "pending_id": None,
        "reason": "trusted",
    }
]

UPSERT_REQUEST: list[JsonValue] = [
    {
        "id": "8412",
        "title": "Oat milk 1 l",
        "images": [
            "https://shop.example/img/8412-front.jpg",
            "https://shop.example/img/8412-back.jpg",
        ],
        "metadata": {"category": "drinks", "price": 2.49},
    }
]

UPSERT_RESPONSE: list[JsonValue] = [
    {
        "collection": "shop",
        "products": 1,
        "added": 1,
        "updated": 0,
        "images_embedded": 2,
        "images_reused": 0,
        "images_unchanged": 0,
        "images_failed": 0,
        "failed": [],
        "seconds": 0.412,
    }
]
