"""Data preparation: one script per dataset, the check and re-rooting.

Each runs as `python -m preprocess.<name>` (from the repository root) or `python preprocess/<name>.py`.
"""
