"""The runtime: executes an engine's plan. It imports engine, tactics and kernels only."""
