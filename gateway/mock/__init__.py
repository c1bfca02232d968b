"""A vLLM-like OpenAI-compatible model service for the demo and the tests, with faults that
can be switched on at run time (errors, hangs, resets, cut streams, slowness)."""
