"""HTTP inference service (BentoML + onnxruntime). Entry: service.app:ModelService."""
