"""The HTTP edge: the app, its endpoints, and what a request is checked against there."""
