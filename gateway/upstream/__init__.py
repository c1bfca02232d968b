"""A request's way to a model service and back: forwarding, the stream relay, the wire formats."""
