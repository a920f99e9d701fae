"""Tests of the kubernetes runner against a fake API server (see fake_api.py)."""
