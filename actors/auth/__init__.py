"""The AuthActor, the key format and scopes, and the key store."""
