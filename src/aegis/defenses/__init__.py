"""Defenses: robust training (``training``), input preprocessing (``preprocessing``), detection
of adversarial inputs (``detection``) and certification by randomized smoothing
(``certification``). Each defense is one file plus its registry entry."""
