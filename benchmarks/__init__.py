"""kiln's benchmarks: `python benchmarks/suite.py` (the suite) and `python benchmarks/minilm.py`."""
