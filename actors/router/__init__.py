"""The RouterActor and what it decides with: model groups, routing rules, balancing."""
