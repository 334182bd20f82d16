"""The HTML report: built from results.json alone, self-contained, numbers equal to the JSON,
SUSPICIOUS never shown as robust, and rendered without errors by a real headless browser."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from aegis.api import run_attack
from aegis.io import rundir
from aegis.model import Classifier, ModelInfo
from aegis.records import Records
from aegis.report.gallery import build_gallery, png_bytes, shown_indices
from aegis.report.html import format_value, lookup, render_report, write_report
from aegis.workflows.rundir_writer import write_results

REPO = Path(__file__).resolve().parents[1]


# -- tiny real runs on the built-in digits ---------------------------------------------------


def _clf(net: nn.Module, name: str = "digits-mlp") -> Classifier:
    return Classifier(net, ModelInfo(num_classes=10, input_shape=(1, 8, 8)), name=name)


@pytest.fixture(scope="module")
def sweep_run(digits_net: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "pgd"
    run_attack(
        _clf(digits_net), "digits", attack="pgd", eps=[0.05, 0.1, 0.2], steps=5, limit=40, out=out
    )
    return out


class Marks(HTMLParser):
    """Collects data-key elements (key, value, format, text), src/href, scripts and ids."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.text_by_id: dict[str, str] = {}
        self.attrs_by_id: dict[str, dict[str, str | None]] = {}
        self.root: dict[str, str | None] = {}
        self._ids: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.root = a
        for name in ("src", "href"):
            if a.get(name):
                self.links.append(str(a[name]))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.scripts.append({"tag": tag, **a})
        if "id" in a:
            self.attrs_by_id[str(a["id"])] = a
            self._ids.append((str(a["id"]), []))
        if tag in ("img", "br", "meta", "circle", "rect", "line", "polyline"):
            return  # void / self-closing elements never hold text
        entry = {"tag": tag, "attrs": a, "text": []}
        self.stack.append(entry)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            entry = self.stack.pop()
            a = entry["attrs"]
            text = "".join(entry["text"])
            if self.stack:
                self.stack[-1]["text"].append(text)
            if "data-key" in a:
                self.marks.append({**a, "text": text})
            if "id" in a:
                self.text_by_id[str(a["id"])] = text
            if entry["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1]["text"].append(data)


def parse(page: str) -> Marks:
    p = Marks()
    p.feed(page)
    p.close()
    return p


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def check_numbers(page: str, results: dict[str, Any], required: list[str]) -> Marks:
    """Every data-key element holds its JSON value, and its text is that value formatted."""
    marks = parse(page)
    stored = json.loads(json.dumps(results, allow_nan=True))
    assert marks.marks, "no data-key element in the page"
    for m in marks.marks:
        want = lookup(stored, m["data-key"])
        assert _same(json.loads(m["data-value"]), want), m
        if "data-format" in m:
            assert m["text"].strip() == format_value(want, m["data-format"]), m
    keys = {m["data-key"] for m in marks.marks}
    missing = [k for k in required if k not in keys]
    assert not missing, f"key numbers missing from the page: {missing}"
    return marks


def check_self_contained(page: str) -> None:
    marks = parse(page)
    external = [u for u in marks.links if not u.startswith(("data:", "#"))]
    assert not external, f"the report loads or links outside itself: {external[:3]}"
    assert all(s["tag"] == "script" and not s.get("src") for s in marks.scripts), marks.scripts
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page), "CSS fetches something"


# -- attack runs ---------------------------------------------------------------------------


def test_attack_run_writes_a_report_built_from_results(sweep_run: Path) -> None:
    results = rundir.read_results(sweep_run)
    assert results["files"]["report"] == "report.html"
    page = (sweep_run / "report.html").read_text()
    assert page == render_report(results), "report.html is not what results.json renders"
    check_self_contained(page)
    k = 10
    required = [
        "metrics.clean_accuracy",
        "metrics.adversarial_accuracy",
        "metrics.success.rate",
        "metrics.clean.macro_f1",
        "metrics.adversarial.macro_f1",
        *(
            f"metrics.{s}.{m}.{c}"
            for s in ("clean", "adversarial")
            for m in ("precision", "recall", "f1")
            for c in range(k)
        ),
        *(f"sweep.{i}.metrics.adversarial_accuracy" for i in range(3)),
        "metrics.confusion.clean.3.3",
        "metrics.confusion.adversarial.0.0",
        "gallery.examples.0.clean_confidence",
        "gallery.examples.0.adv_confidence",
        "gallery.examples.0.norms.linf",
        "seed",
        "config.attack.steps",
        "config.threat.eps",
    ]
    marks = check_numbers(page, results, required)
    text = {m["data-key"]: m["text"] for m in marks.marks}
    acc = results["metrics"]["adversarial_accuracy"]
    assert text["metrics.adversarial_accuracy"] == f"{acc:.1%}"
    assert marks.text_by_id["verdict-badge"] == "MEASURED"
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3 * len(
        results["gallery"]["examples"]
    )


def test_results_hold_gallery_confusion_and_per_class_metrics(sweep_run: Path) -> None:
    results = rundir.read_results(sweep_run)
    gallery = results["gallery"]["examples"]
    assert 1 <= len(gallery) <= 8
    cm = np.asarray(results["metrics"]["confusion"]["adversarial"])
    rec = results["records"]
    assert cm.shape == (10, 10) and cm.sum() == len(rec["y"])
    assert np.trace(cm) / cm.sum() == pytest.approx(results["metrics"]["adversarial_accuracy"])
    assert len(results["metrics"]["clean"]["recall"]) == 10
    for e in gallery:
        i = rec["index"].index(e["index"])
        assert e["adv_pred"] == rec["adv_pred"][i] and e["y"] == rec["y"][i]
        assert 0 < e["clean_confidence"] <= 1 and 0 < e["adv_confidence"] <= 1
        assert e["norms"]["linf"] == pytest.approx(rec["linf"][i])
        png = base64.b64decode(e["adversarial_png"])
        assert png.startswith(b"\x89PNG") and len(png) < 2000  # 8x8 grey: tiny
    assert (sweep_run / "results.json").stat().st_size < 400_000


def test_png_encoder_round_trips_through_matplotlib(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    img = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(img))
    back = mpimg.imread(path)
    assert back.shape == (5, 7, 3)
    assert np.abs(back - np.transpose(img, (1, 2, 0))).max() <= 1 / 255 + 1e-6


def test_gallery_shrinks_large_colour_images() -> None:
    n = 3
    rec = Records.from_dict(
        {
            "index": list(range(n)), "y": [0, 1, 2], "target": [-1] * n,
            "clean_pred": [0, 1, 2], "adv_pred": [1, 1, 0], "eligible": [True] * n,
            "attacked": [True] * n, "success": [True, False, True], "attack_index": [0, -1, 0],
            "l0": [1.0] * n, "l1": [1.0] * n, "l2": [1.0] * n, "linf": [0.1] * n,
            "forward_calls": [1] * n, "gradient_calls": [1] * n, "seconds": [0.0] * n,
        }
    )  # fmt: skip
    x = np.random.default_rng(0).random((n, 3, 150, 130)).astype(np.float32)
    probs = np.full((n, 3), 1 / 3)
    shown = shown_indices(rec)
    assert shown.tolist() == [0, 2, 1]  # successful examples first
    g = build_gallery(x[shown], np.clip(x[shown] + 0.05, 0, 1), rec, shown, probs, probs, (0, 1))
    assert g["downscale"] == 3

    import matplotlib.image as mpimg

    img = mpimg.imread(BytesIO(base64.b64decode(g["examples"][0]["original_png"])), format="png")
    assert img.shape == (50, 43, 3)
    assert [e["index"] for e in g["examples"]] == [0, 2, 1]


def test_preprocessing_defense_run_shows_naive_and_adaptive(
    digits_net: nn.Module, tmp_path: Path
) -> None:
    run_attack(_clf(digits_net), "digits", attack="pgd", eps=0.1, steps=5, limit=16,
               preprocess=["bit-depth:bits=4"], compare_naive=True, out=tmp_path)  # fmt: skip
    results = rundir.read_results(tmp_path)
    page = (tmp_path / "report.html").read_text()
    check_numbers(
        page,
        results,
        ["defense.naive.adversarial_accuracy", "defense.naive.adaptive_adversarial_accuracy"],
    )
    assert 'id="defense"' in page


def test_minimal_norm_run_shows_the_distribution(digits_net: nn.Module, tmp_path: Path) -> None:
    run_attack(
        _clf(digits_net), "digits", attack="fmn", norm="l2", steps=10, limit=24, out=tmp_path
    )
    results = rundir.read_results(tmp_path)
    page = (tmp_path / "report.html").read_text()
    check_numbers(
        page,
        results,
        ["minimal.median", "minimal.percentiles.p90", "minimal.curve.0.accuracy"],
    )
    assert "minimal-norm distribution" in page and "<svg" in page


class _Scale(nn.Module):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.t * z


def test_suspicious_run_renders_suspicious_never_robust(
    digits_net: nn.Module, tmp_path: Path
) -> None:
    # a softmax saturated beyond float64 at the end of the model: "probabilities" (whose
    # remedy runs) and "zero-gradients" (which stays raised)
    soft = nn.Sequential(digits_net, _Scale(1e4), nn.Softmax(dim=1)).eval()
    run_attack(
        _clf(soft, "softmax-mlp"), "digits", attack="pgd", eps=0.1, steps=5, limit=24, out=tmp_path
    )
    results = rundir.read_results(tmp_path)
    assert results["metrics"]["verdict"]["suspicious"]
    page = (tmp_path / "report.html").read_text()
    marks = check_numbers(page, results, ["metrics.adversarial_accuracy"])
    assert marks.text_by_id["verdict-badge"] == "SUSPICIOUS"
    assert marks.text_by_id["verdict-text"].startswith("SUSPICIOUS")
    assert "zero-gradients" in marks.text_by_id["evidence"]
    flag = next(f for f in results["sanity"] if f["name"] == "zero-gradients")
    assert flag["evidence"] in marks.text_by_id["evidence"]
    assert "probabilities" in marks.text_by_id["remedied"]  # its remedy ran, and says so
    # "robust" appears only inside "robust accuracy" (an upper bound), never as a verdict
    assert not re.search(r"robust(?! accuracy)", page, re.IGNORECASE)


def test_a_flag_alone_makes_the_badge_suspicious(sweep_run: Path) -> None:
    results = rundir.read_results(sweep_run)
    results["sanity"][0]["flagged"] = True  # e.g. a results file from an older aegis
    results["metrics"]["verdict"]["suspicious"] = False
    marks = parse(render_report(results))
    assert marks.text_by_id["verdict-badge"] == "SUSPICIOUS"
    assert marks.text_by_id["verdict-text"].startswith("SUSPICIOUS")


# -- the other kinds -----------------------------------------------------------------------


def test_detection_and_certification_runs(digits_net: nn.Module, tmp_path: Path) -> None:
    from aegis.defenses.certification import Smoothing
    from aegis.workflows.certify import run_certify
    from aegis.workflows.detect import run_detect

    clf = _clf(digits_net)
    run_detect(
        clf,
        "digits",
        detector="squeeze",
        eps=0.1,
        steps=5,
        fit_limit=100,
        limit=24,
        adaptive_steps=5,
        out=tmp_path / "detect",
    )
    run_certify(
        clf,
        "digits",
        smoothing=Smoothing(sigma=0.25, n0=10, n=40),
        radii=(0, 0.25),
        limit=12,
        out=tmp_path / "certify",
    )
    for name, required in (
        (
            "detect",
            [
                "detection.non_adaptive.roc_auc",
                "detection.threshold",
                "detection.worst_case.robust_accuracy",
                "config.fpr",
            ],
        ),
        (
            "certify",
            [
                "certification.certified_accuracy.1.accuracy",
                "certification.abstain_rate",
                "config.smoothing.sigma",
            ],
        ),
    ):
        results = rundir.read_results(tmp_path / name)
        page = (tmp_path / name / "report.html").read_text()
        check_self_contained(page)
        check_numbers(page, results, required)


def test_defense_comparison(digits_net: nn.Module, tmp_path: Path) -> None:
    from aegis.workflows.defend import compare_defenses

    model = tmp_path / "mlp.pt"
    torch.jit.script(digits_net).save(str(model))
    compare_defenses(
        model,
        "digits",
        preprocess=["bit-depth:bits=4"],
        smoothed=[model],
        certify_samples=20,
        certify_radii=(0.25,),
        attack="pgd",
        eps=0.1,
        limit=16,
        out=tmp_path / "defend",
    )
    results = rundir.read_results(tmp_path / "defend")
    page = (tmp_path / "defend" / "report.html").read_text()
    check_self_contained(page)
    check_numbers(
        page,
        results,
        [
            "rows.0.clean_accuracy",
            "rows.1.adversarial_accuracy",
            "rows.1.naive_adversarial_accuracy",
            "rows.2.certified_accuracy.0.25",
            "config.eps",
        ],
    )
    assert "Defense comparison" in page


def test_unknown_kind_is_shown_as_tables(tmp_path: Path) -> None:
    results = {
        **rundir.header(3, "membership"),
        "attack": {"name": "shadow-models", "shadows": 4, "threshold": 0.625},
        "metrics": {"auc": 0.71, "per_class": [{"cls": 0, "tpr": 0.5}], "at": {"0.5": 0.25}},
        "sanity": [{"name": "overfit", "flagged": True, "evidence": "train/test gap 40%"}],
        "scores": list(np.linspace(0, 1, 500)),
    }
    write_results(tmp_path, results)
    page = (tmp_path / "report.html").read_text()
    stored = rundir.read_results(tmp_path)
    marks = check_numbers(
        page,
        stored,
        [
            "attack.shadows",
            "attack.threshold",
            "metrics.auc",
            "metrics.per_class.0.tpr",
            "metrics.at.0.5",
            "seed",
        ],
    )
    assert "shadow-models" in page and "500 values" in page
    assert marks.text_by_id["verdict-badge"] == "SUSPICIOUS"
    assert "train/test gap 40%" in marks.text_by_id["evidence"]


_scalars = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=60, deadline=None)
@given(body=st.dictionaries(st.text(min_size=1, max_size=8), _json, max_size=5))
def test_any_new_kind_renders_and_its_numbers_match(body: dict[str, Any]) -> None:
    results = {**body, "schema": rundir.SCHEMA, "kind": "future-kind", "seed": 0}
    page = render_report(results)
    check_self_contained(page)
    marks = parse(page)
    stored = json.loads(json.dumps(results, allow_nan=True))
    for m in marks.marks:
        assert _same(json.loads(m["data-value"]), lookup(stored, m["data-key"])), m


# -- the command ---------------------------------------------------------------------------


def test_report_command_rebuilds_and_reports_errors(sweep_run: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "copy.html"
    code, text, _ = cli("report", str(sweep_run), "--out", str(out))
    assert code == 0 and str(out) in text
    assert out.read_text() == render_report(rundir.read_results(sweep_run))
    code, _, err = cli("report", str(tmp_path / "missing"))
    assert code == 1 and err.count("\n") == 1 and "run directory" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{ truncated")
    code, _, err = cli("report", str(bad))
    assert code == 1 and err.count("\n") == 1 and "results.json" in err
    code, text, _ = cli("report", "--help")
    assert code == 0 and "--open" in text and "results.json" in text


def test_write_report_next_to_results(sweep_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(sweep_run, target)
    (target / "report.html").unlink()
    path = write_report(target / "results.json")
    assert path == target / "report.html" and path.read_text().startswith("<!DOCTYPE html>")


# -- the real browser ----------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        message = "chromium not found: install Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so the browser test may not be skipped")
        pytest.skip(message)
    return exe


def _browse(exe: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        exe,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--user-data-dir=" + str(page.parent / ".chr"),
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def test_report_renders_in_a_headless_browser(sweep_run: Path, tmp_path: Path) -> None:
    exe = _chromium()
    results = rundir.read_results(sweep_run)
    page = tmp_path / "report.html"
    shutil.copy(sweep_run / "report.html", page)
    dom = _browse(exe, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    consoles = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not consoles, consoles
    marks = check_numbers(
        dom.stdout,
        results,
        ["metrics.adversarial_accuracy", "sweep.0.metrics.adversarial_accuracy"],
    )
    assert marks.root.get("data-js") == "ok", "the page's script did not run"
    assert marks.text_by_id.get("aegis-errors", "") == "", marks.text_by_id["aegis-errors"]
    assert "hidden" in marks.attrs_by_id["aegis-errors"]

    shot = tmp_path / "report.png"
    res = _browse(exe, page, f"--screenshot={shot}", "--window-size=1280,2400")
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
    saved = REPO / "test-output"
    saved.mkdir(exist_ok=True)
    shutil.copy(shot, saved / "report.png")


def test_browser_hook_catches_errors(sweep_run: Path, tmp_path: Path) -> None:
    """The error box the browser test relies on does fill up when something breaks."""
    exe = _chromium()
    results = rundir.read_results(sweep_run)
    results["gallery"]["examples"][0]["original_png"] = "bm90IGEgcG5n"  # "not a png"
    page = tmp_path / "broken.html"
    page.write_text(
        render_report(results).replace("</main>", '<script>console.error("boom")</script></main>')
    )
    dom = _browse(exe, page, "--dump-dom")
    errors = parse(dom.stdout).text_by_id.get("aegis-errors", "")
    assert "boom" in errors and "IMG failed to load" in errors, errors
