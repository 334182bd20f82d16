"""Preprocessing defenses: adaptive (BPDA/EOT) evaluation by default, naive beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aegis import sanity
from aegis.api import run_attack
from aegis.cli import EXIT_OK, EXIT_USAGE
from aegis.defenses.preprocessing import (
    DEFAULT_EOT_SAMPLES,
    DefendedClassifier,
    defend,
    list_preprocessors,
    parse_preprocess,
)
from aegis.engine import evaluate
from aegis.errors import ConfigError, DataError
from aegis.model import Classifier, ModelInfo
from aegis.registry import create
from aegis.threat import ThreatModel

NAMES = [s.name for s in list_preprocessors()]


def margin_loss(y: torch.Tensor):  # type: ignore[no-untyped-def]
    def loss(z: torch.Tensor) -> torch.Tensor:
        return z.gather(1, y[:, None]).squeeze(1) - z.logsumexp(1)

    return loss


# -- the soundness test -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "naive_above"),
    [("jpeg:quality=75", 0.5), ("bit-depth:bits=4", 0.5), ("median:size=3", None)],
)
def test_adaptive_breaks_preprocessing_that_naive_calls_robust(
    digits_model, spec: str, naive_above: float | None
) -> None:
    model, x, y = digits_model
    x, y = x[:80].numpy(), y[:80].numpy()
    undefended = run_attack(model, (x, y), attack="pgd", eps=0.3)
    assert undefended.metrics["adversarial_accuracy"] <= 0.02
    run = run_attack(model, (x, y), attack="pgd", eps=0.3, preprocess=[spec], compare_naive=True)
    defense = run.results["defense"]
    adaptive_acc = run.metrics["adversarial_accuracy"]
    naive_acc = defense["naive"]["adversarial_accuracy"]
    assert defense["adaptive"] is True and defense["preprocess"] == [spec]
    assert defense["naive"]["misleading"] is True
    assert adaptive_acc <= 0.05, f"{spec}: the adaptive attack left {adaptive_acc:.0%}"
    if naive_above is not None:
        # JPEG runs outside torch and rounding has zero derivative: the naive attack sees no
        # gradient at all and reports a robust-looking, wrong number.
        assert naive_acc >= naive_above, f"{spec}: naive {naive_acc:.0%}"
        assert defense["naive"]["overestimate"] >= naive_above - 0.05
        zero = {f["name"]: f["flagged"] for f in defense["naive"]["sanity"]}["zero-gradients"]
        assert zero  # the naive evaluation's own sanity check tells it is masked
        assert defense["bpda"] == [spec]
    else:
        # The median's exact gradient is the stronger direction: no BPDA, naive = adaptive.
        assert defense["bpda"] == [] and defense["steps"][0]["gradient"] == "exact"
        assert naive_acc <= 0.05


def test_median_exact_gradient_is_not_weaker_than_bpda(digits_model) -> None:
    """Pins the decision to attack the median through torch's gradient (not BPDA)."""
    model, x, y = digits_model
    x, y = x[:80], y[:80]
    threat = ThreatModel("linf", 0.1)
    exact = evaluate(defend(model, ["median:size=3"]), x, y, create("pgd"), threat).records

    class BPDAMedian(DefendedClassifier):  # the same median forced through BPDA
        def _apply(self, step, x):  # type: ignore[no-untyped-def]
            out = step(x.detach(), self.bounds)
            return x + (out - x).detach() if x.requires_grad else out

    bpda_model = BPDAMedian(model, [parse_preprocess("median:size=3")])
    bpda = evaluate(bpda_model, x, y, create("pgd"), threat).records
    exact_acc = (exact.adv_pred == exact.y).mean()
    bpda_acc = (bpda.adv_pred == bpda.y).mean()
    assert exact_acc <= bpda_acc, (exact_acc, bpda_acc)


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce"])
def test_random_defense_is_not_frozen_at_borderline_points(digits_model, attack: str) -> None:
    """An iterate that fooled the averaged logits may not fool the engine's fresh draw: with
    early stopping on a randomized model PGD left 34% here (undefended: 0%)."""
    model, x, y = digits_model
    defended = defend(model, ["gaussian-noise:sigma=0.1"])
    assert defended.randomized and not model.randomized
    rec = evaluate(defended, x[:60], y[:60], create(attack), ThreatModel("linf", 0.3)).records
    assert (rec.adv_pred == rec.y).mean() <= 0.05


# -- BPDA and EOT ----------------------------------------------------------------------------


def test_bpda_and_eot_selected_and_recorded(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:20].numpy(), y[:20].numpy()
    specs = ["jpeg:quality=75", "gaussian-noise:sigma=0.1", "spatial-smoothing:size=3"]
    run = run_attack(model, (x, y), attack="fgsm", eps=0.1, preprocess=specs)
    d = run.results["defense"]
    assert d["adaptive"] is True
    assert d["preprocess"] == [
        "jpeg:quality=75",
        "gaussian-noise:sigma=0.1",
        "spatial-smoothing:size=3,kernel=mean,sigma=1.0",
    ]
    assert d["bpda"] == ["jpeg:quality=75"]
    assert d["eot"] == {"steps": ["gaussian-noise:sigma=0.1"], "samples": DEFAULT_EOT_SAMPLES}
    assert [s["gradient"] for s in d["steps"]] == ["bpda", "exact + eot (10 draws)", "exact"]
    # Every EOT draw is a gradient call per sample: FGSM takes one gradient of 10 draws.
    attacked = run.evaluation.records.attacked
    assert (run.evaluation.records.gradient_calls[attacked] == DEFAULT_EOT_SAMPLES).all()
    naive = run_attack(model, (x, y), attack="fgsm", eps=0.1, preprocess=specs, adaptive=False)
    nd = naive.results["defense"]
    assert nd["adaptive"] is False and nd["bpda"] == [] and nd["eot"] is None
    assert (naive.evaluation.records.gradient_calls[attacked] == 1).all()
    flags = {f["name"]: f for f in run.results["sanity"]}
    assert flags["randomized"]["flagged"] and "EOT in use" in flags["randomized"]["evidence"]
    assert "SUSPICIOUS" in run.verdict
    eot5 = run_attack(model, (x, y), attack="fgsm", eps=0.1, preprocess=specs, eot_samples=5)
    assert eot5.results["defense"]["eot"]["samples"] == 5


def test_eot_gradient_is_the_mean_of_per_draw_gradients(digits_model) -> None:
    model, x, y = digits_model
    x, y = x[:6], y[:6]
    k = 4
    eot = defend(model, ["gaussian-noise:sigma=0.2"], eot_samples=k, seed=3)
    with eot.counting(6) as counter:
        z, loss, grad = eot.value_and_grad(x, margin_loss(y))
    assert (counter.gradient == k).all() and (counter.forward == 0).all()
    # The same draws one at a time: a naive (one-draw) classifier with the same seed.
    single = defend(model, ["gaussian-noise:sigma=0.2"], adaptive=False, seed=3)
    draws = [single.value_and_grad(x, margin_loss(y)) for _ in range(k)]
    grads = torch.stack([g for _, _, g in draws])
    assert not torch.allclose(grads[0], grads[1])  # the draws differ
    torch.testing.assert_close(grad, grads.mean(0))
    torch.testing.assert_close(loss, torch.stack([v for _, v, _ in draws]).mean(0))
    torch.testing.assert_close(z, torch.stack([o for o, _, _ in draws]).mean(0))
    # Each per-draw gradient is the model's exact gradient at that noisy input.
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    xg = noisy.clone().requires_grad_(True)
    (own,) = torch.autograd.grad(margin_loss(y)(model.module(xg)).sum(), xg)
    torch.testing.assert_close(draws[0][2], own * ((noisy > 0) & (noisy < 1)))


@pytest.mark.parametrize("spec", ["jpeg:quality=50", "bit-depth:bits=2"])
def test_bpda_backward_is_identity_and_naive_is_zero(digits_model, spec: str) -> None:
    model, x, y = digits_model
    x, y = x[:8], y[:8]
    adaptive = defend(model, [spec])
    _, _, g = adaptive.value_and_grad(x, margin_loss(y))
    # BPDA: the model's gradient at the preprocessed input, passed straight through.
    _, _, at_fx = model.value_and_grad(adaptive.preprocess(x), margin_loss(y))
    torch.testing.assert_close(g, at_fx, atol=1e-5, rtol=1e-4)
    assert g.abs().sum() > 0
    _, _, zero = defend(model, [spec], adaptive=False).value_and_grad(x, margin_loss(y))
    assert torch.equal(zero, torch.zeros_like(zero))


def test_query_calls_apply_one_random_draw(digits_model) -> None:
    model, x, _ = digits_model
    noisy = defend(model, ["gaussian-noise:sigma=0.3"])
    with noisy.counting(10) as counter:
        a, b = noisy.logits(x[:10]), noisy.logits(x[:10])
    assert not torch.allclose(a, b)
    assert (counter.forward == 2).all() and (counter.gradient == 0).all()
    again = defend(model, ["gaussian-noise:sigma=0.3"])  # same seed, same draws
    torch.testing.assert_close(again.logits(x[:10]), a)


def test_defense_applies_before_normalization() -> None:
    seen: list[torch.Tensor] = []

    def net(z: torch.Tensor) -> torch.Tensor:
        seen.append(z)
        return z.flatten(1)[:, :2]

    info = ModelInfo(num_classes=2, input_shape=(1, 2, 2), mean=(0.5,), std=(0.5,))
    clf = defend(Classifier(net, info), ["bit-depth:bits=1"])
    clf.logits(torch.tensor([[[[0.2, 0.7], [0.4, 0.9]]]]))
    # Rounded to {0, 1} in pixel space, then normalized to {-1, 1}.
    assert torch.equal(seen[-1], torch.tensor([[[[-1.0, 1.0], [-1.0, 1.0]]]]))


# -- the steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_steps_keep_shape_and_bounds(name: str, channels: int, bounds) -> None:  # type: ignore[no-untyped-def]
    lo, hi = bounds
    g = torch.Generator().manual_seed(0)
    x = lo + (hi - lo) * torch.rand(3, channels, 9, 7, generator=g)
    x[0, :, :2] = lo  # pixels on the box's faces
    x[1, :, :2] = hi
    step = parse_preprocess(name)
    out = step(x, bounds, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= lo and out.max() <= hi
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)  # every step changes random images


def test_steps_do_what_they_say() -> None:
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    b = parse_preprocess("bit-depth:bits=2")(x, (0.0, 1.0))
    assert (b * 3 - torch.round(b * 3)).abs().max() < 1e-6 and len(torch.unique(b)) <= 4
    m = parse_preprocess("median:size=3")(x, (0.0, 1.0))
    assert m[0, 0, 2, 3] == x[0, 0, 1:4, 2:5].median()
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    assert parse_preprocess("median")(spike, (0.0, 1.0)).abs().sum() == 0
    assert parse_preprocess("spatial-smoothing")(spike, (0.0, 1.0))[0, 0, 2, 2] == 1 / 9
    flat = torch.full((1, 3, 8, 8), 0.5)
    j = parse_preprocess("jpeg:quality=90")(flat, (0.0, 1.0))
    assert (j - flat).abs().max() <= 2 / 255
    noise = parse_preprocess("gaussian-noise:sigma=0")(flat, (0.0, 1.0))
    assert torch.equal(noise, flat)


def test_jpeg_refuses_other_channel_counts() -> None:
    with pytest.raises(DataError, match=r"grayscale .* or RGB"):
        parse_preprocess("jpeg")(torch.rand(1, 2, 8, 8), (0.0, 1.0))


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jpg", r"unknown preprocessing defense 'jpg'; did you mean 'jpeg'\?"),
        ("jpeg:qualty=75", r"no parameter 'qualty'; did you mean 'quality'\?"),
        ("jpeg:quality=high", "quality must be an integer, got 'high'"),
        ("jpeg:quality=0", r"quality must be in \[1, 100\], got 0"),
        ("jpeg:quality", "NAME:PARAM=VALUE"),
        ("jpeg:", "NAME:PARAM=VALUE"),
        (":quality=3", "NAME:PARAM=VALUE"),
        ("bit-depth:bits=4,bits=5", "given twice"),
        ("bit-depth:bits=0", r"bits must be in \[1, 16\]"),
        ("median:size=1", "size must be >= 2"),
        ("gaussian-noise:sigma=-0.1", "sigma must be >= 0"),
        ("spatial-smoothing:kernel=box", "kernel must be 'mean' or 'gaussian'"),
    ],
)
def test_parse_errors_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_preprocess(text)
    assert "\n" not in str(info.value)


def test_parse_values_and_specs_round_trip() -> None:
    step = parse_preprocess("spatial-smoothing:size=5,kernel=gaussian,sigma=1.5")
    assert step.params() == {"size": 5, "kernel": "gaussian", "sigma": 1.5}
    assert parse_preprocess(step.spec()) == step
    assert parse_preprocess(" bit-depth : bits = 3 ").params() == {"bits": 3}
    assert set(NAMES) == {"jpeg", "bit-depth", "median", "spatial-smoothing", "gaussian-noise"}


def test_api_option_errors(digits_model) -> None:
    model, x, y = digits_model
    arrays = (x[:4].numpy(), y[:4].numpy())
    with pytest.raises(ConfigError, match="--preprocess"):
        run_attack(model, arrays, attack="fgsm", compare_naive=True)
    with pytest.raises(ConfigError, match="drop --eot-samples"):
        run_attack(model, arrays, attack="fgsm", preprocess=["jpeg"], adaptive=False, eot_samples=4)
    given = run_attack(defend(model, ["jpeg"]), arrays, attack="fgsm", compare_naive=True)
    assert given.results["defense"]["naive"]["misleading"]
    with pytest.raises(ConfigError, match="already defended"):
        defend(defend(model, ["jpeg"]), ["median"])


def test_sanity_with_defended_models(digits_model) -> None:
    model, x, y = digits_model
    det = {f.name: f for f in sanity.probe_model(defend(model, ["jpeg"]), x[:16], y[:16])}
    assert not any(f.flagged for f in det.values())  # BPDA: gradients are not masked
    naive = {
        f.name: f
        for f in sanity.probe_model(defend(model, ["jpeg"], adaptive=False), x[:16], y[:16])
    }
    assert naive["zero-gradients"].flagged
    rnd = sanity.probe_model(defend(model, ["gaussian-noise"], adaptive=False), x[:16], y[:16])
    flag = {f.name: f for f in rnd}["randomized"]
    assert flag.flagged and "EOT is not in use" in flag.evidence


# -- CLI --------------------------------------------------------------------------------------


def _cmd(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "attack",
        str(files["model"]),
        str(files["x"]),
        "--labels",
        str(files["y"]),
        "--out",
        str(out),
        "--attack",
        "pgd",
        "--steps",
        "10",
        *extra,
    ]


def test_cli_preprocess_end_to_end(tiny_files, cli, tmp_path) -> None:
    out = tmp_path / "run"
    args = _cmd(tiny_files, out, "--eps", "0.4", "--preprocess", "bit-depth:bits=2", "--naive")
    code, text, err = cli(*args, "--preprocess", "median:size=3")
    assert code == EXIT_OK, err
    text = " ".join(text.split())  # undo the console's line wrapping
    assert "defense: bit-depth:bits=2 → median:size=3 · adaptive (BPDA for bit-depth" in text
    assert "accuracy under attack, adaptive:" in text
    assert "accuracy under attack, naive (MISLEADING" in text
    res = json.loads((out / "results.json").read_text())
    d = res["defense"]
    assert d["preprocess"] == ["bit-depth:bits=2", "median:size=3"] and d["adaptive"]
    assert d["bpda"] == ["bit-depth:bits=2"]
    assert d["naive"]["adversarial_accuracy"] > res["metrics"]["adversarial_accuracy"]
    assert res["model"]["preprocess"] == d["preprocess"]


def test_cli_noise_eot_and_listing(tiny_files, cli, tmp_path) -> None:
    out = tmp_path / "noise"
    code, text, err = cli(
        *_cmd(tiny_files, out, "--preprocess", "gaussian-noise:sigma=0.05", "--eot-samples", "3")
    )
    assert code == EXIT_OK, err
    text = " ".join(text.split())
    assert "EOT over 3 draws for gaussian-noise:sigma=0.05" in text
    assert "sanity: randomized" in text and "EOT in use" in text
    res = json.loads((out / "results.json").read_text())
    assert res["defense"]["eot"]["samples"] == 3
    code, text, _ = cli(*_cmd(tiny_files, tmp_path / "n", "--preprocess", "jpeg", "--no-adaptive"))
    assert code == EXIT_OK and "NAIVE (no BPDA/EOT" in " ".join(text.split())
    code, text, _ = cli("defenses")
    assert code == EXIT_OK
    assert all(name in text for name in ("jpeg", "bit-depth", "median", "BPDA", "EOT"))


def test_cli_preprocess_errors(tiny_files, cli, tmp_path) -> None:
    code, _, err = cli(*_cmd(tiny_files, tmp_path / "e", "--preprocess", "jpg"))
    assert code == EXIT_USAGE  # a bad option value
    assert err.strip().count("\n") == 0 and "did you mean 'jpeg'" in err
    code, _, err = cli(*_cmd(tiny_files, tmp_path / "f", "--naive"))
    assert code == EXIT_USAGE and "--preprocess" in err
