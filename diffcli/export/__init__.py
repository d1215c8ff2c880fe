"""Export and import of trained models: safetensors, diffusers folders, ONNX."""
