"""The compiler driver: ONNX file + BuildConfig -> Engine."""
