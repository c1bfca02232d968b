"""The HTTP edge of citadel-gateway and the process around it."""
