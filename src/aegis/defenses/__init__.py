"""Defenses: robust training, preprocessing, detection of adversarial inputs, certification."""
