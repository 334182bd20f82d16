"""Defenses: robust training strategies (``aegis.defenses.training``) and, later, preprocessing,
detection and certification. Each defense is one file plus its registry entry."""
