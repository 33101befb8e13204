"""The studio domain: node contract, project manifest, graph, takes, workspace and tiers.

Pure Python and pydantic: nothing here imports Prefect, FastAPI or torch.
"""
