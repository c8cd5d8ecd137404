"""The engine: a plan (what to run, in what order, on which buffers) plus its weights."""
