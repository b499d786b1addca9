"""Kubernetes: rendering, server-side apply, the API-key Secret, waiting with hints, port-forward."""
