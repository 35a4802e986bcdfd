"""The service's adapters: the one real implementation of each port (service/ports.py) against an outside system.

redis_store (+ cluster_writes, append_script): Redis; onnx_encoder, text_encoder: onnxruntime; faiss_index: FAISS.
Only the composition roots (service.app, service.bundle) import them; everything else goes through the ports."""
