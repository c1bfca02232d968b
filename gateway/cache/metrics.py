"""The cache's counters, in the gateway's registry (labels: configured model names and fixed
words only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "citadel_cache_lookups",
            "Cacheable requests by result: hit, miss, bypass (not cacheable, or the client said "
            "no-cache / no-store), unavailable (the cache's store failed or was slow).",
            ["model", "result"],
            registry=registry,
        )
        self.coalesced = Counter(
            "citadel_cache_coalesced",
            "Requests answered by an identical request's answer while it was upstream.",
            ["model"],
            registry=registry,
        )
        self.stores = Counter(
            "citadel_cache_stores",
            "Answers offered to the cache, by result: stored, too_large, failed.",
            ["model", "result"],
            registry=registry,
        )
        self.stored_bytes = Counter(
            "citadel_cache_stored_bytes",
            "Bytes of answers written to the cache.",
            ["model"],
            registry=registry,
        )
        self.saved_tokens = Counter(
            "citadel_cache_saved_tokens",
            "Tokens the model services did not spend: answers served from the cache.",
            ["model", "kind"],
            registry=registry,
        )
        self.semantic = Counter(
            "citadel_cache_semantic_lookups",
            "Semantic lookups (after an exact miss) by result: hit, miss, guarded (similar "
            "enough, but a number, a negation or the word order differs), unavailable (the "
            "embedding failed or was slow).",
            ["model", "result"],
            registry=registry,
        )
        self.errors = Counter(
            "citadel_cache_errors",
            "Calls to the cache's store that failed or ran past cache.timeout, by operation.",
            ["operation"],
            registry=registry,
        )
