"""Prefect tasks: text-to-image per tier, and the bookkeeping around a take."""
