"""Training code for the bundled demo model and, later, networks (LoRA, embeddings)."""
