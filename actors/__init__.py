"""The actors of citadel-gateway and the kernel they run on.

`actors` never imports `gateway`: the HTTP edge depends on the actors, not the reverse.
"""
