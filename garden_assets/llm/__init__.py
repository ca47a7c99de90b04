"""LLM library layer: prompts (the one Dolly format), model resolution/loading, finetune dataset.

Modules are imported directly (``from garden_assets.llm import prompts``); nothing heavy is imported here, so
loading the Dagster code location does not pull in torch. Never imports dagster.
"""
