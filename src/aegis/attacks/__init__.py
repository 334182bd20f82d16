"""Evasion attacks. Importing this package registers the built-in attacks and suites."""

from aegis.attacks import ensembles  # noqa: F401  (registers the suites)
from aegis.attacks.apgd import APGD, APGDCE, APGDDLR, APGDT
from aegis.attacks.base import Attack
from aegis.attacks.bim import BIM
from aegis.attacks.cw import CarliniWagnerL2
from aegis.attacks.ddn import DDN
from aegis.attacks.deepfool import DeepFool
from aegis.attacks.ead import EAD
from aegis.attacks.fab import FAB, FABT
from aegis.attacks.fgsm import FGSM
from aegis.attacks.fmn import FMN
from aegis.attacks.hsj import HopSkipJump
from aegis.attacks.jsma import JSMA
from aegis.attacks.mifgsm import MIFGSM
from aegis.attacks.pgd import PGD
from aegis.attacks.pgd_l0 import PGDL0
from aegis.attacks.sparse_rs import SparseRS
from aegis.attacks.spsa import SPSA
from aegis.attacks.square import Square

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "BIM",
    "DDN",
    "EAD",
    "FAB",
    "FABT",
    "FGSM",
    "FMN",
    "JSMA",
    "MIFGSM",
    "PGD",
    "PGDL0",
    "SPSA",
    "Attack",
    "CarliniWagnerL2",
    "DeepFool",
    "HopSkipJump",
    "SparseRS",
    "Square",
]
