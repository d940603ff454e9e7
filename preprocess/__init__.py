"""Data preparation: one script per dataset (`python -m preprocess.<dataset> --root ...`), the check and re-rooting."""
