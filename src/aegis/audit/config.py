"""The ``aegis audit`` configuration: a YAML file validated by pydantic models.

One file names the model(s), the data and a list of evaluations, each tagged by ``type``
(``attack``, ``defend``, ``detect``, ``certify``, ``poison``, ``extract``, ``membership``)
with its options and an optional ``require`` block of pass/fail thresholds; an optional
``mlflow`` block logs the finished audit to an MLflow tracking store, and an optional
``executor`` block says where the batches of ``attack`` evaluations run (``local``, or ``ray``
with ``workers`` and ``address``). Unknown keys are errors (``extra="forbid"``), so a misspelt
threshold never passes silently.

    >>> cfg = load_config("audit.yaml")
    >>> [e.type for e in cfg.evaluations]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aegis.errors import ConfigError

Norm = Literal["linf", "l2", "l1", "l0"]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- thresholds ---------------------------------------------------------------------------


class AttackRequire(_Strict):
    """Thresholds on an attack run's headline (largest ``eps``) metrics."""

    min_clean_accuracy: Share | None = None
    min_adversarial_accuracy: Share | None = None
    max_success_rate: Share | None = None


class DefendRequire(_Strict):
    """Thresholds every defended row (not the undefended base) of the comparison must meet."""

    min_clean_accuracy: Share | None = None
    min_adversarial_accuracy: Share | None = None


class DetectRequire(_Strict):
    """Thresholds on the detector against the adaptive (detector-aware) attack."""

    min_detection_auc: Share | None = None
    min_robust_accuracy: Share | None = None
    max_clean_flagged: Share | None = None


class CertifyRequire(_Strict):
    """Certified accuracy at ``radius`` (one of the evaluation's ``radii``), abstain rate."""

    min_certified_accuracy: Share | None = None
    radius: Annotated[float, Field(ge=0.0)] | None = None
    max_abstain_rate: Share | None = None


class PoisonRequire(_Strict):
    """Backdoor success of the poisoned model, and of the best cleaned (retrained) model."""

    max_backdoor_success: Share | None = None
    max_cleaned_backdoor_success: Share | None = None
    min_clean_accuracy: Share | None = None


class ExtractRequire(_Strict):
    """The attacker's best figures over every (output policy, budget)."""

    max_extraction_fidelity: Share | None = None
    max_transfer_success: Share | None = None


class MembershipRequire(_Strict):
    """The strongest membership attack's ROC AUC over every variant."""

    max_membership_auc: Share | None = None


# -- evaluations --------------------------------------------------------------------------


class _Evaluation(_Strict):
    name: str | None = None


class AttackEval(_Evaluation):
    """``aegis attack``: an attack or suite (``pgd``, ``apgd-ce,apgd-t``, ``standard``)."""

    type: Literal["attack"]
    attack: str = "pgd"
    norm: Norm = "linf"
    eps: Annotated[list[Positive], Field(min_length=1)] = [0.3]
    preprocess: list[str] = []
    params: dict[str, Any] = {}
    require: AttackRequire = AttackRequire()

    @field_validator("eps", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        """``eps: 0.3`` and ``eps: [0.1, 0.3]`` (a sweep; the largest is the headline)."""
        return [v] if isinstance(v, (int, float, str)) else v


class DefendEval(_Evaluation):
    """``aegis defend``: the model against defended models, preprocessing and detectors."""

    type: Literal["defend"]
    models: list[str] = []
    preprocess: list[str] = []
    detectors: list[str] = []
    attack: str = "standard"
    norm: Norm = "linf"
    eps: Positive = 0.3
    require: DefendRequire = DefendRequire()


class DetectEval(_Evaluation):
    """``aegis detect``: fit a detector, attack it plainly and adaptively."""

    type: Literal["detect"]
    detector: str = "mahalanobis"
    attack: str = "pgd"
    norm: Norm = "linf"
    eps: Positive = 0.3
    fpr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    fit_limit: Annotated[int, Field(ge=1)] = 1000
    adaptive_steps: Annotated[int, Field(ge=1)] = 100
    params: dict[str, Any] = {}
    require: DetectRequire = DetectRequire()


class CertifyEval(_Evaluation):
    """``aegis certify``: randomized smoothing with noise ``sigma``."""

    type: Literal["certify"]
    sigma: Positive = 0.25
    n0: Annotated[int, Field(ge=1)] = 100
    n: Annotated[int, Field(ge=1)] = 1000
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.001
    radii: list[Annotated[float, Field(ge=0.0)]] = [0.0, 0.25, 0.5, 1.0]
    require: CertifyRequire = CertifyRequire()


class PoisonEval(_Evaluation):
    """``aegis poison``: poison the data's train split, detect, retrain (no model needed)."""

    type: Literal["poison"]
    attack: str = "badnets"
    rate: Share = 0.1
    target: int | None = 0
    trigger: str = "square:size=3,pos=br"
    defenses: list[str] = ["activation-clustering", "spectral"]
    epochs: Annotated[int, Field(ge=1)] = 5
    train_limit: Annotated[int, Field(ge=1)] | None = None
    require: PoisonRequire = PoisonRequire()


class ExtractEval(_Evaluation):
    """``aegis extract``: train substitutes from the model's outputs, transfer attacks."""

    type: Literal["extract"]
    budgets: list[Annotated[int, Field(ge=1)]] = [250, 500, 1000, 2000]
    outputs: list[str] = ["labels", "scores", "round:2", "round:1"]
    attack: str = "pgd"
    norm: Norm = "linf"
    eps: Positive = 0.3
    steps: Annotated[int, Field(ge=1)] = 40
    transfer_limit: Annotated[int, Field(ge=1)] = 200
    require: ExtractRequire = ExtractRequire()


class MembershipEval(_Evaluation):
    """``aegis membership``: train targets on the data (no model needed), attack them."""

    type: Literal["membership"]
    variants: list[str] = ["base", "wd=5e-4", "epochs=5", "shift=1"]
    shadows: Annotated[int, Field(ge=1)] = 4
    member_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    require: MembershipRequire = MembershipRequire()


Evaluation = Annotated[
    AttackEval | DefendEval | DetectEval | CertifyEval | PoisonEval | ExtractEval | MembershipEval,
    Field(discriminator="type"),
]

#: Evaluation types that use no model of the audit (they train their own): run once.
MODEL_FREE = frozenset({"poison", "membership"})


class MlflowConfig(_Strict):
    """``mlflow:``: log the finished audit to MLflow, one child run per evaluation (what
    ``aegis audit --mlflow`` does; from Python, call :func:`aegis.report.tracking.log_run`).
    ``mlflow: true`` takes the defaults."""

    uri: Annotated[str, Field(min_length=1)] | None = None
    experiment: Annotated[str, Field(min_length=1)] = "aegis"


class ExecutorConfig(_Strict):
    """Where the batches of ``attack`` evaluations run (``aegis attack --executor``): ``local``
    (this process) or ``ray`` (``workers`` Ray workers, default one per GPU else one per CPU;
    a local Ray instance, or the cluster at ``address``). ``executor: ray`` is short for
    ``executor: {name: ray}``. The records do not depend on it."""

    name: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(ge=1)] | None = None
    address: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _ray_only(self) -> ExecutorConfig:
        if self.name == "local" and (self.workers is not None or self.address is not None):
            raise ValueError("workers and address are for Ray workers; add name: ray")
        return self


class AuditConfig(_Strict):
    """The whole audit. ``models`` are model files; ``data`` a file or built-in name."""

    models: Annotated[list[str], Field(min_length=1)]
    data: str = "digits"
    labels: str | None = None
    limit: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    out: str | None = None
    mlflow: MlflowConfig | None = None
    executor: ExecutorConfig = ExecutorConfig()
    evaluations: Annotated[list[Evaluation], Field(min_length=1)]

    @field_validator("mlflow", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        """``mlflow: true`` is ``mlflow: {}`` (the defaults), ``mlflow: false`` no block."""
        if v is True:
            return {}
        return None if v is False else v


# -- loading ------------------------------------------------------------------------------

ECHO_WIDTH = 80
"""The most characters of a user's value (or key) an error message repeats."""


def _short(value: Any, *, plain: bool = False) -> str:
    """``repr(value)`` (``str`` when ``plain``) cut to :data:`ECHO_WIDTH` characters with an
    ellipsis, so a huge value keeps the message one short line."""
    text = str(value) if plain else repr(value)
    return text if len(text) <= ECHO_WIDTH else f"{text[: ECHO_WIDTH - 3]}..."


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """``evaluations.1.attack.eps.0`` → ``evaluations.1.eps``: drop the union tag pydantic
    adds, and the list index of a value the user wrote as a single number."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "evaluations":
        del parts[2]  # the discriminator tag
    node, kept = raw, []
    for part in parts:
        if isinstance(part, int) and not isinstance(node, list):
            break
        plain = isinstance(part, int) or (part.isprintable() and part.strip() == part != "")
        kept.append(_short(part, plain=plain))  # a key with a newline stays one line
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(kept) or "(top level)"


def _message(err: dict[str, Any], config: Any) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if kind == "too_short":
        return "must not be empty"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return (
            f"unknown evaluation type {_short(err['input'].get('type'))}; use one of "
            "attack, defend, detect, certify, poison, extract, membership"
        )
    if kind == "union_tag_not_found":
        return "needs a 'type' (attack, defend, detect, certify, poison, extract, membership)"
    if kind == "value_error":  # a validator's own message
        return str(msg).removeprefix("Value error, ")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
        bound = next(iter(ctx.values()))
        return f"must be {op.get(kind, '<=')} {bound:g}, got {_short(err['input'])}"
    return f"{msg[0].lower()}{msg[1:]}, got {_short(err['input'])}"


def parse_config(raw: Any, source: str = "audit config") -> AuditConfig:
    """Validate an already-parsed mapping; raise one-line :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of keys (models, data, evaluations)")
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        key = _where(first["loc"], raw)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {key}: {_message(dict(first), raw)}{more}") from None


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a YAML audit config; every problem is one :class:`ConfigError` line.

    The YAML is parsed within limits (:func:`aegis.io.safe_yaml.load_yaml`): at most 1 MiB, no
    alias bombs, no duplicate keys."""
    from aegis.io.safe_yaml import MAX_BYTES, load_yaml

    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read audit config {p}: {exc.strerror or exc}; write one with "
            "`aegis audit --example audit.yaml`"
        ) from None
    if len(data) > MAX_BYTES:
        raise ConfigError(
            f"{p.name}: larger than {MAX_BYTES // 1024} KiB, too large for an audit config; "
            "check the path (write one with `aegis audit --example audit.yaml`)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}); an audit config is a YAML file"
        ) from None
    return parse_config(load_yaml(text, p.name), p.name)
