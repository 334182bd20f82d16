"""``aegis audit``'s configuration schema (``config``); the audit itself, one YAML config, every
evaluation, one run directory and a CI gate, is :mod:`aegis.workflows.audit`."""
