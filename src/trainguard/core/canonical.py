"""Canonical JSON and domain-separated signing input.

A signature covers ``DOMAIN + b" " + canonical_json(payload)``. The domain prefix
(e.g. ``trainguard-manifest-v1``) stops a signature made for one kind of object
from being replayed as another kind.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no insignificant whitespace, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signing_input(domain: str, value: Any) -> bytes:
    """The exact bytes a signature over ``value`` in ``domain`` covers."""
    if not domain or " " in domain:
        raise ValueError(f"invalid signing domain {domain!r}")
    return domain.encode("ascii") + b" " + canonical_json(value)
