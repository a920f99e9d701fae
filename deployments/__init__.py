"""Prefect deployments for the launch agent: `serve.py` (no work pool) and `prefect.yaml`."""
