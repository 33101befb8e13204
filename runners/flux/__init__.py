"""The FLUX Function Runner: a real diffusers FluxPipeline behind the runner env-var contract.

Importing this package (or ``contract``, ``generation``, ``plan``, ``tiers``) does not import
torch or diffusers: inputs are validated before the heavy imports, so bad input fails at once.
It uses nothing of the rest of the project, so its image stays lean.
"""
