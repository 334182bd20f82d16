"""``aegis audit --resume``: an audit interrupted inside its second evaluation (in the middle
of an attack) resumes without running the first again, reads back the attack's finished
batches, and writes the results.json of an uninterrupted audit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import aegis.workflows.attack
from aegis.audit.config import parse_config
from aegis.cli import EXIT_ERROR, EXIT_OK
from aegis.workflows.audit import STATE, _key

Cli = Callable[..., tuple[int, str, str]]
BATCH = 10  # 60 inputs: 6 batches per attack run
Batches = dict[str, tuple[int, int]]


class Interrupted(RuntimeError):
    """Stands for a kill: not an AegisError, so the audit stops instead of recording it."""


class Spy:
    """Wraps ``aegis.workflows.attack.evaluate`` (the call behind every attack evaluation):
    small batches, an interruption on demand, and the batch files of each checkpoint folder
    before and after each call."""

    def __init__(self) -> None:
        self.stop: tuple[str, int] | None = None  # (folder part, samples done) to stop at
        self.calls: list[tuple[str, Batches, Batches]] = []

    def __call__(self, real: Any, *args: Any, **kw: Any) -> Any:
        folder = Path(kw["checkpoint"])
        where = f"{folder.parent.parent.name}/{folder.name}"  # 1-attack-tiny/evaluation-1
        before = _batches(folder)
        kw["batch_size"] = BATCH
        if self.stop is not None and self.stop[0] == where:
            limit = self.stop[1]

            def progress(done: int) -> None:
                if done >= limit:
                    raise Interrupted(f"killed after {done} inputs of {where}")

            kw["progress"] = progress
        result = real(*args, **kw)
        self.calls.append((where, before, _batches(folder)))
        return result


def _batches(folder: Path) -> Batches:
    """Batch file → inode and modification time (a batch written again changes both)."""
    stats = {p.name: p.stat() for p in folder.glob("batch-*.npz")}
    return {name: (st.st_ino, st.st_mtime_ns) for name, st in stats.items()}


@pytest.fixture()
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    real = aegis.workflows.attack.evaluate
    s = Spy()
    monkeypatch.setattr(aegis.workflows.attack, "evaluate", lambda *a, **kw: s(real, *a, **kw))
    yield s


def _config(files: dict[str, Path], sweep: list[float]) -> dict[str, Any]:
    return {
        "models": [str(files["model"])],
        "data": str(files["x"]),
        "labels": str(files["y"]),
        "seed": 3,
        "evaluations": [
            {
                "type": "attack",
                "eps": 0.3,
                "params": {"steps": 5},
                "require": {"min_clean_accuracy": 0.5},
            },
            {"type": "attack", "name": "sweep", "eps": sweep, "params": {"steps": 5}},
        ],
    }


def _write(tmp_path: Path, cfg: dict[str, Any], name: str = "audit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _stored(path: Path) -> dict[str, Any]:
    """results.json without what differs between any two runs: times and the command line."""
    res: dict[str, Any] = json.loads(path.read_text())
    for key in ("created", "command", "seconds"):
        res.pop(key, None)
    return res


def test_an_interrupted_audit_resumes_to_the_uninterrupted_results(
    cli: Cli, spy: Spy, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    config = _write(tmp_path, _config(tiny_files, [0.1, 0.3]))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, _, err = cli("audit", str(config), "--out", str(whole))
    assert code == EXIT_OK, err

    # interrupted in the second evaluation, in its second attack run (ε = 0.3), after 2 of
    # its 6 batches: the first evaluation and the sweep's first run (ε = 0.1) are complete
    spy.stop = ("1-attack-tiny/evaluation-1", 2 * BATCH)
    spy.calls.clear()
    code, _, err = cli("audit", str(config), "--out", str(cut))
    assert code == EXIT_ERROR and "Interrupted" in err, err
    assert not (cut / "results.json").exists()
    first = cut / "0-attack-tiny" / "results.json"
    first_bytes = first.read_bytes()
    assert set(json.loads((cut / STATE).read_text())["finished"]) == {"0-attack-tiny"}
    progress = cut / "1-attack-tiny" / "progress"
    assert len(_batches(progress / "evaluation-0")) == 6
    kept = _batches(progress / "evaluation-1")
    assert len(kept) == 2

    spy.stop = None
    spy.calls.clear()
    code, out, err = cli("audit", str(config), "--out", str(cut), "--resume")
    assert code == EXIT_OK, err
    assert "resumed: 1 finished evaluation(s) read back (0-attack-tiny)" in out
    # the finished evaluation was not run again: no attack call, its files untouched
    assert [where for where, _, _ in spy.calls] == [
        "1-attack-tiny/evaluation-0",
        "1-attack-tiny/evaluation-1",
    ]
    assert first.read_bytes() == first_bytes
    # the interrupted one read back every finished batch (none written again) and attacked
    # only the rest
    (_, before0, after0), (_, before1, after1) = spy.calls
    assert len(before0) == 6 and after0 == before0
    assert before1 == kept and len(after1) == 6 and all(after1[k] == v for k, v in kept.items())
    assert not progress.exists()  # removed once the evaluation's results were written

    assert _stored(cut / "results.json") == _stored(whole / "results.json")
    a, b = (_stored(d / "1-attack-tiny" / "results.json") for d in (whole, cut))
    for res in (a, b):
        for part in [res, *res["sweep"]]:
            part["records"].pop("seconds")
            part["metrics"]["calls"].pop("seconds")
    assert a["records"] == b["records"] and a["sweep"] == b["sweep"]
    assert a["metrics"] == b["metrics"]
    assert 0 < b["metrics"]["success"]["successes"] < 60  # real attacks, not no-ops


def test_resume_runs_again_what_changed(
    cli: Cli, spy: Spy, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = _write(tmp_path, _config(tiny_files, [0.2]))
    code, _, err = cli("audit", str(config), "--out", str(out))
    assert code == EXIT_OK, err
    assert len(spy.calls) == 2

    spy.calls.clear()
    changed = _write(tmp_path, _config(tiny_files, [0.1]), "changed.yaml")
    code, out_text, err = cli("audit", str(changed), "--out", str(out), "--resume")
    assert code == EXIT_OK, err
    assert [where for where, _, _ in spy.calls] == ["1-attack-tiny/evaluation-0"]
    assert "read back (0-attack-tiny)" in out_text
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["evaluations"][1]["eps"] == [0.1]
    sweep = json.loads((out / "1-attack-tiny" / "results.json").read_text())
    assert sweep["config"]["threat"]["eps"] == 0.1

    # without --resume the finished audit is kept; with --overwrite everything runs again
    spy.calls.clear()
    code, out_text, err = cli("audit", str(changed), "--out", str(out))
    assert code == EXIT_ERROR and "--overwrite" in err and not spy.calls  # nothing lost
    code, out_text, err = cli("audit", str(changed), "--out", str(out), "--overwrite")
    assert code == EXIT_OK, err
    assert len(spy.calls) == 2 and "resumed" not in out_text


def test_resume_needs_the_run_directory(
    cli: Cli, tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    code, _, err = cli("audit", str(_write(tmp_path, _config(tiny_files, [0.1]))), "--resume")
    assert code == EXIT_ERROR and err.count("\n") == 1
    assert "--resume needs the run directory of the interrupted audit" in err


def test_the_key_follows_settings_and_model_content(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = parse_config(_config(tiny_files, [0.1]))
    ev = cfg.evaluations[0]
    model = str(tiny_files["model"])
    assert _key(ev, model, cfg, {}) == _key(ev, model, cfg, {})
    assert _key(cfg.evaluations[1], model, cfg, {}) != _key(ev, model, cfg, {})
    other_seed = cfg.model_copy(update={"seed": 4})
    assert _key(ev, model, other_seed, {}) != _key(ev, model, cfg, {})
    copy = tmp_path / "tiny.pt"
    copy.write_bytes(tiny_files["model"].read_bytes())
    same = _key(ev, str(copy), cfg, {})
    copy.write_bytes(copy.read_bytes() + b"\0")  # same path, other weights
    assert _key(ev, str(copy), cfg, {}) != same
