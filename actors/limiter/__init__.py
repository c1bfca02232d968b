"""The RateLimiterActor and its arithmetic, kept in this process or in Redis."""
