"""The process around the edge: the command line, the server, workers, systemd, reload, logging."""
