"""Cached, verified pre-candidate layers: the state a cell reaches after provisioning, the
products' installs and a clean baseline boot, kept on the lab host so later cells, baseline
reruns and later runs with the same content key start from it.

:mod:`~compatlab.cache.key` makes the key (pure), :mod:`~compatlab.cache.digest` computes the
digests it is made of, :mod:`~compatlab.cache.layer` says what a published layer holds, and
:mod:`~compatlab.cache.store` keeps the layers on disk (atomic publish, one build per key, LRU
eviction that never touches a layer in use).
"""

from __future__ import annotations

from compatlab.cache.digest import file_digest, image_digests, key_inputs, product_inputs
from compatlab.cache.key import (
    PROVISION_VERSION,
    KeyInputs,
    ProductInput,
    cache_key,
    hardware_fields,
)
from compatlab.cache.size import format_size, parse_size
from compatlab.cache.store import (
    BuildLayer,
    Entry,
    Layer,
    LayerStore,
    Manifest,
    PruneReport,
)

__all__ = [
    "PROVISION_VERSION",
    "BuildLayer",
    "Entry",
    "KeyInputs",
    "Layer",
    "LayerStore",
    "Manifest",
    "ProductInput",
    "PruneReport",
    "cache_key",
    "file_digest",
    "format_size",
    "hardware_fields",
    "image_digests",
    "key_inputs",
    "parse_size",
    "product_inputs",
]
