"""The one typed result of a user workflow (``run_detect``, ``run_certify``,
``compare_defenses``, ``run_poisoning``, ``run_extraction``, ``run_membership``, ``run_audit``,
``inspect_model``): the results dict that ``results.json`` holds, where the run directory is and
what was written there, and the per-sample records where the workflow has them.

It is also a read-only mapping over ``results``, so ``res["detection"]``, ``res.get("files")``,
``"out_dir" in res`` and ``dict(res)`` read the results as they did when the workflows returned
plain dicts.

    >>> res = run_detect("models/mnist_cnn.safetensors", "mnist", out="runs/detect")
    >>> res.kind, res["detection"]["non_adaptive"]["roc_auc"], res.paths["report"]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["WorkflowResult"]


@dataclass(frozen=True, eq=False)
class WorkflowResult(Mapping[str, Any]):
    """What a workflow returns.

    Attributes:
        kind: the workflow (``detect``, ``certify``, ``defend``, ``poison``, ``extract``,
            ``membership``, ``audit``, ``inspect``); ``results["kind"]`` keeps the schema's
            name of the results (``detection``, ``certification``, …).
        results: the results, as written to ``out_dir/results.json`` (plus ``out_dir``, and
            whatever else the workflow documents as not stored, e.g. the audit's ``reused``).
        out_dir: the run directory, or None when nothing was written.
        paths: the files the workflow wrote, by name: ``results`` (results.json) and every
            entry of ``results["files"]`` (``report``, plots, …); empty when nothing was
            written.
        records: the per-sample records where the workflow has them (e.g. the certificates),
            else None.

    Equality is that of the results (as for any mapping), so ``res == {...}`` compares them.
    """

    kind: str
    results: dict[str, Any] = field(repr=False)
    out_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    records: Any | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        kind: str,
        results: dict[str, Any],
        *,
        records: Any | None = None,
        extra: Mapping[str, Path] | None = None,
    ) -> WorkflowResult:
        """The result of a workflow whose run directory (if any) is ``results["out_dir"]``,
        holding ``results.json`` and the files named in ``results["files"]``; ``extra`` adds
        files written elsewhere."""
        where = results.get("out_dir")
        out_dir = None if where is None else Path(where)
        paths: dict[str, Path] = {}
        if out_dir is not None:
            paths["results"] = out_dir / "results.json"
            files = results.get("files")
            if isinstance(files, dict):
                for name, rel in files.items():
                    if isinstance(rel, str):
                        paths[str(name)] = out_dir / rel
        paths.update(extra or {})
        return cls(kind, results, out_dir, paths, records)

    def __getitem__(self, key: str) -> Any:
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)
