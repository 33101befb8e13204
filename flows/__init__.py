"""Prefect flows: a batch of takes for TDs, and a node's compiled upstream graph."""
