"""What the PostgreSQL-backed stores share: the schema and its migrations (schema)."""
