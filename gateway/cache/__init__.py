"""The response cache: a repeated deterministic request answered without a model.

    settings     the YAML: `cache:` (where entries live, bounds) and `models[].cache` (policy)
    fingerprint  what identifies an answer: a hash of the fields that affect it
    answer       a cached answer, assembled from a JSON answer or a stream's events, and
                 rendered back in either wire format
    backends     aiocache backends: bounded memory (per worker) or Redis (shared)
    store        the cache the edge talks to: deadlines, outage bypass, request coalescing
    metrics      hits, misses, bypasses, errors, bytes and tokens saved

The edge (gateway.http.caching) consults it in the request's own task, after routing (the
served model is part of the key) and before admission and any lease.
"""
