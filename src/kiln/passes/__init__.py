"""Graph-to-graph rewrites: one pass per file, ordered in pipeline.py."""
