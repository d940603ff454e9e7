"""Test helpers: a collective checker, the multi-process fault harness, the spec reference model, shared configs."""
