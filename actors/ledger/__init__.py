"""The UsageLedgerActor and the SQLite store it writes through."""
