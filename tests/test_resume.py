"""Kill a run with SIGKILL at a random moment, resume it: the records of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from aegis.errors import AegisError
from aegis.records import Records

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    sys.path.insert(0, {tests!r})
    from _factories import SmallCNN
    from aegis.engine import evaluate
    from aegis.model import Classifier, ModelInfo
    from aegis.registry import create
    from aegis.threat import ThreatModel

    def setup():
        torch.manual_seed(0)
        clf = Classifier(SmallCNN(width=6), ModelInfo(num_classes=4, input_shape=(1, 12, 12)))
        x = torch.rand(60, 1, 12, 12, generator=torch.Generator().manual_seed(1))
        return clf, x, clf.predict(x)

    def run(checkpoint, slow):
        clf, x, y = setup()
        def progress(done):
            if slow:
                time.sleep(0.05)  # widens the window in which the kill can land
        return evaluate(clf, x, y, create("pgd", steps=15), ThreatModel("linf", 0.1),
                        batch_size=5, seed=7, progress=progress, checkpoint=checkpoint)

    if __name__ == "__main__":
        run(sys.argv[1], slow=True)
    """
)


def _load(tmp_path: Path):  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("resume_job", tmp_path / "job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(a: Records, b: Records) -> None:
    for f in fields(Records):
        if f.name != "seconds":  # wall time differs between any two runs
            np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@pytest.mark.parametrize("trial", [0, 1])
def test_a_killed_run_resumes_to_the_uninterrupted_records(tmp_path: Path, trial: int) -> None:
    job = tmp_path / "job.py"
    job.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    ckpt = tmp_path / "progress"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(job), str(ckpt)], env=env)
    deadline = time.monotonic() + 120
    try:
        while len(list(ckpt.glob("batch-*.npz"))) < 2 + 3 * trial:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no batch was written in time"
            time.sleep(0.01)
        time.sleep(random.Random(trial).uniform(0.0, 0.08))  # kill at an arbitrary moment
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    finished = len(list(ckpt.glob("batch-*.npz")))
    assert 2 <= finished < 12  # killed part-way, nothing finished was lost

    module = _load(tmp_path)
    resumed = module.run(ckpt, slow=False)
    whole = module.run(None, slow=False)
    _same(resumed.records, whole.records)
    np.testing.assert_array_equal(resumed.x_adv, whole.x_adv)
    assert len(list(ckpt.glob("batch-*.npz"))) == 12  # the rest was attacked and written
    assert resumed.records.success.any()  # the check compares real attacks, not no-ops


def test_a_checkpoint_of_other_settings_is_not_reused(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    module = _load(tmp_path)
    ckpt = tmp_path / "progress"
    first = module.run(ckpt, slow=False)
    clf, x, y = module.setup()
    from aegis.engine import evaluate
    from aegis.registry import create
    from aegis.threat import ThreatModel

    other = evaluate(
        clf, x, y, create("pgd", steps=15), ThreatModel("linf", 0.05), batch_size=5, seed=7,
        checkpoint=ckpt,
    )  # fmt: skip
    assert len(list(ckpt.glob("batch-*.npz"))) == 24  # its own batches, none read back
    assert not np.array_equal(other.records.linf, first.records.linf)
    (ckpt / "batch-000000000-x.npz").write_bytes(b"corrupt")  # never matches a key: ignored
    again = module.run(ckpt, slow=False)
    _same(again.records, first.records)


def test_attack_cli_resume_needs_out_and_cleans_up(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("attack", "x.pt", "digits", "--resume")
    assert code == 2 and "--resume needs the --out" in err  # a usage error


def test_run_attack_keeps_progress_only_until_its_results_are_written(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    module = _load(tmp_path)
    clf, x, y = module.setup()
    from aegis.api import run_attack

    out = tmp_path / "run"
    (out / "progress" / "evaluation-0").mkdir(parents=True)
    (out / "progress" / "evaluation-0" / "stale.npz").write_bytes(b"old")
    with pytest.raises(AegisError, match="--resume to continue it, or --overwrite"):
        run_attack(clf, (x.numpy(), y.numpy()), attack="pgd", eps=0.1, steps=5, out=out)
    assert (out / "progress" / "evaluation-0" / "stale.npz").read_bytes() == b"old"  # kept
    a = run_attack(
        clf, (x.numpy(), y.numpy()), attack="pgd", eps=0.1, steps=5, out=out, overwrite=True
    )
    assert (out / "results.json").is_file() and not (out / "progress").exists()
    b = run_attack(
        clf, (x.numpy(), y.numpy()), attack="pgd", eps=0.1, steps=5, out=out, resume=True
    )
    assert a.metrics["adversarial_accuracy"] == b.metrics["adversarial_accuracy"]


def test_a_random_defense_resumes_to_the_uninterrupted_records(tmp_path: Path) -> None:
    """A random preprocessing defense draws afresh from each batch's seed: a batch attacked
    again on resume (its checkpoint lost) gives what it gave in the uninterrupted run, though
    the batches before it were read back rather than run."""
    import torch

    from aegis.defenses.preprocessing import defend
    from aegis.engine import evaluate
    from aegis.model import Classifier, ModelInfo
    from aegis.registry import create
    from aegis.threat import ThreatModel

    sys.path.insert(0, str(Path(__file__).parent))
    from _factories import SmallCNN

    torch.manual_seed(0)
    clf = Classifier(SmallCNN(width=6), ModelInfo(num_classes=4, input_shape=(1, 12, 12)))
    x = torch.rand(30, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = clf.predict(x)
    noisy = defend(clf, ["gaussian-noise:sigma=0.2"], eot_samples=2)
    kw = dict(batch_size=5, seed=7, checkpoint=tmp_path / "ck")

    def run() -> Records:
        return evaluate(noisy, x, y, create("pgd", steps=5), ThreatModel("linf", 0.1), **kw).records  # type: ignore[arg-type]

    whole = run()
    files = sorted((tmp_path / "ck").glob("*.npz"))
    assert len(files) == 6
    files[3].unlink()  # the fourth batch is attacked again, the others are read back
    _same(whole, run())
