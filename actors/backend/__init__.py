"""One BackendActor per replica, and what it owns: its settings, circuit breaker and probe."""
