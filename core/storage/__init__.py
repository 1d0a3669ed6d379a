"""Storage at the bottom of core: the SQL store, the key-value store (Redis or in memory), jobs and blobs,
the result cache and the shared folder the workers mount. It imports nothing of core but settings."""
