"""The report of an attack run (results without ``kind``): verdict, metrics, the accuracy-vs-ε
curve or minimal-norm distribution, per-class metrics, confusion matrices, the gallery, sanity
checks and the defense section."""

from __future__ import annotations

from aegis.report.page import Page, esc
from aegis.report.svg import bar_chart, histogram, line_chart


def _attack_title(page: Page) -> tuple[str, str]:
    cfg = page.get("config", {}) or {}
    threat = cfg.get("threat", {}) or {}
    name = (cfg.get("attack") or {}).get("name", "attack")
    eps = threat.get("eps")
    title = f"aegis report · {name} {threat.get('norm', '')} ε={eps}"
    model = page.get("model.source") or page.get("model.name") or "model"
    n = page.get("metrics.n", "?")
    data = page.get("data.name", "?")
    sub = f"model {model} · data {data} ({n} inputs) · {page.get('created', '')}"
    return title, sub


def _attack_verdict(page: Page) -> None:
    v = page.get("metrics.verdict", {}) or {}
    flagged = page.flagged()
    if v.get("suspicious") or flagged:
        badge, css = "SUSPICIOUS", "suspicious"
    elif v.get("reached") is True:
        badge, css = "ATTACK SUCCEEDS", "succeeds"
    elif v.get("reached") is False:
        badge, css = "ATTACK FAILS", "fails"
    else:
        badge, css = "MEASURED", "info"
    text = str(v.get("text", ""))
    if flagged and not text.startswith("SUSPICIOUS"):
        text = "SUSPICIOUS evaluation: " + text
    tiles = (
        '<div class="tiles">'
        + page.tile("clean accuracy", "metrics.clean_accuracy")
        + page.tile("accuracy under attack (upper bound)", "metrics.adversarial_accuracy")
        + page.tile("attack success rate", "metrics.success.rate")
        + page.tile("inputs attacked", "metrics.success.attacked", "int")
        + (
            page.tile("required success rate", "metrics.verdict.threshold")
            if v.get("threshold") is not None
            else ""
        )
        + (
            page.tile(f"median minimal {page.get('minimal.norm')}", "minimal.median", "num")
            if page.has("minimal")
            else ""
        )
        + "</div>"
    )
    page.verdict(badge, css, text, tiles + page.evidence())


def _metrics_table(page: Page) -> None:
    rows = [("accuracy", "metrics.clean_accuracy", "metrics.adversarial_accuracy")]
    rows += [
        (f"macro {k}", f"metrics.clean.macro_{k}", f"metrics.adversarial.macro_{k}")
        for k in ("precision", "recall", "f1")
    ]
    body = "".join(
        f'<tr><td>{esc(label)}</td><td class="r">{page.num(a, "pct")}</td>'
        f'<td class="r">{page.num(b, "pct")}</td></tr>'
        for label, a, b in rows
    )
    s = "metrics.success"
    norms = page.get("metrics.norms", {}) or {}
    nrows = "".join(
        f"<tr><td>{esc(n)}</td>"
        + "".join(
            f'<td class="r">{page.num(f"metrics.norms.{n}.{q}")}</td>'
            for q in ("mean", "median", "max")
        )
        + "</tr>"
        for n in norms
    )
    calls = "metrics.calls"
    html_ = (
        '<table><thead><tr><th>metric</th><th class="r">clean</th><th class="r">under attack</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
        f"<p>Success rate {page.num(f'{s}.rate', 'pct')}: {page.num(f'{s}.successes', 'int')} of "
        f"{page.num(f'{s}.attacked', 'int')} attacked inputs ({page.num(f'{s}.total', 'int')} in "
        f"all, "
        f"{page.num(f'{s}.clean_correct', 'int')} correctly classified, "
        f"{page.num(f'{s}.excluded_target', 'int')} excluded because their label is the target, "
        f"{page.num(f'{s}.skipped_misclassified', 'int')} misclassified and not attacked).</p>"
        "<h3>Perturbation norms of the successful adversarial examples</h3>"
        '<table><thead><tr><th>norm</th><th class="r">mean</th><th class="r">median</th>'
        f'<th class="r">max</th></tr></thead><tbody>{nrows}</tbody></table>'
        f'<p class="sub">Cost: {page.num(f"{calls}.gradient_total", "int")} gradients, '
        f"{page.num(f'{calls}.forward_total', 'int')} forward queries, "
        f"{page.num('seconds', 'sec')} in all.</p>"
    )
    page.add("Metrics", html_, "metrics")


def _curve(page: Page) -> None:
    """A minimal-norm run's accuracy-vs-ε curve and distribution, else a sweep's curve."""
    norm = page.get("config.threat.norm", "")
    if page.has("minimal"):
        _minimal_curve(page, norm)
    elif page.has("sweep"):
        _sweep_curve(page, norm)


def _minimal_curve(page: Page, norm: str) -> None:
    page.shown.add("minimal")
    curve = page.get("minimal.curve", []) or []
    points = [
        (float(p["eps"]), float(p["accuracy"])) for p in curve if p.get("accuracy") is not None
    ]
    rows = "".join(
        f'<tr><td class="r">{page.num(f"minimal.curve.{i}.eps")}</td>'
        f'<td class="r">{page.num(f"minimal.curve.{i}.accuracy", "pct")}</td>'
        f'<td class="r">{page.num(f"minimal.curve.{i}.success", "pct")}</td></tr>'
        for i in range(len(curve))
    )
    rec_norms = page.get(f"records.{page.get('minimal.norm')}", []) or []
    success = page.get("records.success", []) or []
    found = [float(v) for v, ok in zip(rec_norms, success, strict=False) if ok]
    pct = page.get("minimal.percentiles", {}) or {}
    prow = "".join(f'<td class="r">{page.num(f"minimal.percentiles.{k}")}</td>' for k in pct)
    body = (
        '<div class="charts"><div>'
        + line_chart(
            [("accuracy", "#2f6db5", points)],
            xlabel=f"ε ({norm})",
            ylabel="accuracy under attack",
        )
        + "</div><div>"
        + histogram(found, xlabel=f"smallest adversarial perturbation ({page.get('minimal.norm')})")
        + "</div></div>"
        f"<p>Minimal {esc(page.get('minimal.norm'))} perturbation found for "
        f"{page.num('minimal.found', 'int')} of {page.num('minimal.attacked', 'int')} attacked "
        f"inputs: median {page.num('minimal.median')}, mean {page.num('minimal.mean')}.</p>"
        "<table><thead><tr>"
        + "".join(f'<th class="r">{esc(k)}</th>' for k in pct)
        + f"</tr></thead><tbody><tr>{prow}</tr></tbody></table>"
        "<details><summary>accuracy-vs-ε points</summary><table><thead><tr>"
        '<th class="r">ε</th><th class="r">accuracy</th><th class="r">success rate</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></details>"
    )
    page.add("Accuracy vs ε and minimal-norm distribution", body, "curve")


def _sweep_curve(page: Page, norm: str) -> None:
    page.shown.add("sweep")
    sweep = page.get("sweep", []) or []
    points = [
        (float(p["eps"]), float(p["metrics"]["adversarial_accuracy"]))
        for p in sweep
        if p["metrics"].get("adversarial_accuracy") is not None
    ]
    rows = "".join(
        f'<tr><td class="r">{page.num(f"sweep.{i}.eps")}</td>'
        f'<td class="r">{page.num(f"sweep.{i}.metrics.adversarial_accuracy", "pct")}</td>'
        f'<td class="r">{page.num(f"sweep.{i}.metrics.success.rate", "pct")}</td>'
        f'<td class="r">{page.num(f"sweep.{i}.metrics.adversarial.macro_f1", "pct")}</td></tr>'
        for i in range(len(sweep))
    )
    body = (
        '<div class="charts"><div>'
        + line_chart(
            [("accuracy under attack", "#2f6db5", points)],
            xlabel=f"ε ({norm})",
            ylabel="accuracy under attack",
        )
        + '</div><div><table><thead><tr><th class="r">ε</th><th class="r">accuracy under '
        "attack</th>"
        '<th class="r">success rate</th><th class="r">macro F1</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div></div>"
    )
    page.add("Accuracy vs ε", body, "curve")


def _per_class(page: Page) -> None:
    clean = page.get("metrics.clean", {}) or {}
    k = len(clean.get("recall", []) or [])
    if not k:
        return
    rows = "".join(
        f'<tr><td>{c}</td><td class="r">{page.num(f"metrics.clean.support.{c}", "int")}</td>'
        + "".join(
            f'<td class="r">{page.num(f"metrics.{side}.{m}.{c}", "pct")}</td>'
            for m in ("precision", "recall", "f1")
            for side in ("clean", "adversarial")
        )
        + "</tr>"
        for c in range(k)
    )
    head = "".join(
        f'<th class="r">{m} {side}</th>'
        for m in ("precision", "recall", "F1")
        for side in ("clean", "attacked")
    )
    chart = (
        bar_chart(
            [str(c) for c in range(k)],
            [
                ("recall, clean", "#2f6db5", list(clean.get("recall", []))),
                (
                    "recall, under attack",
                    "#b3261e",
                    list(page.get("metrics.adversarial.recall", []) or []),
                ),
            ],
            ylabel="recall",
            width=min(900, 120 + 48 * k),
        )
        if k <= 40
        else ""
    )
    page.add(
        "Per-class precision, recall and F1",
        chart
        + '<table><thead><tr><th>class</th><th class="r">support</th>'
        + head
        + f"</tr></thead><tbody>{rows}</tbody></table>",
        "per-class",
    )


def _matrix(page: Page, key: str, title: str) -> str:
    m = page.get(key)
    if not isinstance(m, list) or not m:
        return ""
    peak = max((max(row) for row in m if row), default=0) or 1
    head = "".join(f"<th>{j}</th>" for j in range(len(m[0])))
    rows = []
    for i, row in enumerate(m):
        cells = []
        for j, c in enumerate(row):
            alpha = c / peak
            colour = "47,109,181" if i == j else "179,38,30"
            ink = "#fff" if alpha > 0.55 else "inherit"
            cells.append(
                f'<td style="background:rgba({colour},{alpha:.3f});color:{ink}">'
                f"{page.num(f'{key}.{i}.{j}', 'int')}</td>"
            )
        rows.append(f"<tr><th>{i}</th>{''.join(cells)}</tr>")
    return (
        f'<div><h3>{esc(title)}</h3><table class="cm"><thead><tr><th>true \\ pred</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _confusion(page: Page) -> None:
    if not page.has("metrics.confusion") or page.get("metrics.confusion") is None:
        return
    body = _matrix(page, "metrics.confusion.clean", "clean") + _matrix(
        page, "metrics.confusion.adversarial", "under attack"
    )
    page.add(
        "Confusion matrices",
        '<p class="sub">Rows: true class; columns: predicted class.</p>'
        f'<div class="cms">{body}</div>',
        "confusion",
    )


def _gallery(page: Page) -> None:
    examples = page.get("gallery.examples")
    if not isinstance(examples, list) or not examples:
        return
    page.shown.add("gallery")
    norm = page.get("config.threat.norm", "linf")
    targeted = bool(page.get("config.threat.targeted"))
    cards = []
    for i, e in enumerate(examples):
        g = f"gallery.examples.{i}"
        fooled = bool(e.get("success"))
        status = (
            '<span class="fooled">fooled</span>'
            if fooled
            else (
                '<span class="held">held</span>'
                if e.get("attacked")
                else '<span class="sub">not attacked</span>'
            )
        )
        imgs = "".join(
            f'<figure><img alt="{esc(label)} {i}" '
            f'src="data:image/png;base64,{esc(e.get(key, ""))}">'
            f"<figcaption>{esc(label)}</figcaption></figure>"
            for key, label in (
                ("original_png", "original"),
                ("perturbation_png", "perturbation"),
                ("adversarial_png", "adversarial"),
            )
            if e.get(key)
        )
        cards.append(
            f'<div class="example"><div class="imgs">{imgs}</div>'
            f'<div class="lab">input #{page.num(f"{g}.index", "int")} · true '
            f"{page.num(f'{g}.y', 'int')}"
            + (f" · target {page.num(f'{g}.target', 'int')}" if targeted else "")
            + f" · {status}</div>"
            f'<div class="lab">clean: {page.num(f"{g}.clean_pred", "int")} '
            f"({page.num(f'{g}.clean_confidence', 'pct')})"
            f" → adv: {page.num(f'{g}.adv_pred', 'int')} "
            f"({page.num(f'{g}.adv_confidence', 'pct')})</div>"
            f'<div class="lab sub">‖δ‖<sub>{esc(norm)}</sub> {page.num(f"{g}.norms.{norm}")} · '
            f"L2 {page.num(f'{g}.norms.l2')} · L0 {page.num(f'{g}.norms.l0', 'int')}</div></div>"
        )
    page.add(
        "Gallery",
        f'<p class="sub">Original, perturbation (amplified '
        f"×{page.num('gallery.perturbation_gain')} "
        "around grey) and adversarial input; confidences are the model's softmax outputs for "
        "the predicted class, computed when the run was made.</p>"
        f'<div class="gallery" id="gallery">{"".join(cards)}</div>',
        "gallery",
    )


def _defense(page: Page) -> None:
    if not page.has("defense"):
        return
    page.shown.add("defense")
    d = page.get("defense", {}) or {}
    body = ""
    if isinstance(d.get("naive"), dict):
        body += (
            "<p><b>Naive (misleading) vs adaptive evaluation.</b> Accuracy under attack, naive: "
            f"{page.num('defense.naive.adversarial_accuracy', 'pct')}; adaptive: "
            f"{page.num('defense.naive.adaptive_adversarial_accuracy', 'pct')}; the naive one "
            f"overestimates by {page.num('defense.naive.overestimate', 'pct')}.</p>"
        )
    body += page.tree(d, "defense")
    page.add("Defense", body, "defense")


def render_attack(page: Page) -> str:
    title, sub = _attack_title(page)
    _attack_verdict(page)
    page.shown.update(("metrics", "records", "files", "seconds"))
    _metrics_table(page)
    _curve(page)
    _per_class(page)
    _confusion(page)
    _gallery(page)
    page.sanity()
    _defense(page)
    page.rest()
    page.provenance()
    return page.html(title, sub)
