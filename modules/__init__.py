"""The engine: models, prompts, sampling and processing, importable without the web UI."""
