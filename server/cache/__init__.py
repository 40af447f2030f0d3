"""Result caches beyond the in-process LRU of :mod:`server.result_cache`: the Redis backend shared by
replicas, its storage format, the single-flight policy, and the factory that picks a backend."""
