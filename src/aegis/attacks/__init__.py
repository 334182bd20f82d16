"""Evasion attacks. Importing this package registers the built-in attacks and suites."""

from aegis.attacks import ensembles  # noqa: F401  (registers the suites)
from aegis.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT
from aegis.attacks.base import Attack
from aegis.attacks.bim import BIM
from aegis.attacks.fgsm import FGSM
from aegis.attacks.mifgsm import MIFGSM
from aegis.attacks.pgd import PGD

__all__ = ["APGD", "APGDCE", "APGDDLR", "APGDT", "BIM", "FGSM", "MIFGSM", "PGD", "Attack"]
