"""LoRA-family networks and textual-inversion embeddings.

- `catalog`: files on disk — safetensors headers, A1111 hashes (addnet, sha256) with a cache, safe loading,
  the LoRA listing (`LoraCatalog`).
- `lora`: LoRA/LoCon/LoHa/LoKr/DoRA files (kohya and diffusers/PEFT layouts) → `Network` of per-weight updates
  resolved against a model's real module names (`load_network`, `build_module_index`).
- `patcher`: `WeightPatcher.apply([NetworkPatch(...)])` changes weights in place and restores them exactly.
- `embeddings`: textual-inversion files → `Embedding` records; `scan_embeddings` lists a set of folders.
"""
