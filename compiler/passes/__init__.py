"""Graph passes. Each pass is a small object with a `name` and `run(graph) -> graph`; the ordered list
lives in compiler/pipeline.py."""
