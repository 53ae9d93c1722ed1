"""SeedVR2 checkpoints: manifests and validation, reading every file format, weights directories, downloads.

- `weights.manifest`: the shipped key/shape manifests of the official checkpoints, `validate_state_dict`.
- `weights.checkpoint`: `read_state_dict` / `read_shapes` for `.pth`, `.safetensors` (fp32/fp16/bf16/fp8/int8) and
  `.gguf`, compact weights kept packed on request.
- `weights.gguf_reader`: GGUF files (ComfyUI-GGUF layout); `weights.scaled`: ComfyUI's scaled fp8 and int8 layers.
- `weights.formats`: the bytes a model's weights take in each format, predicted from its shapes.
- `weights.bundle`: `inspect_weights_dir` and `load_models` for a weights directory.
- `weights.download`: `download` from Hugging Face.
- `weights.tiny`: the tiny test model, random weights built in memory (`--model tiny`).

Submodules are imported on use, so `import weights` stays cheap.
"""

from seedvr_local.weights.manifest import CheckpointMismatchError, Manifest, load_manifest, validate_state_dict

__all__ = ["CheckpointMismatchError", "Manifest", "load_manifest", "validate_state_dict"]
