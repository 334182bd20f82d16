"""``aegis audit``: one YAML config, every evaluation, one run directory and a CI gate."""
