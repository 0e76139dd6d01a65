"""Bars: thresholds given as data (a suite's ``"bars"`` list), checked against a run's results.

A bar is a dict::

    {"bar": "S0 INT8 bundle size", "value": "memory.static.{key}.bundle_bytes", "scale": 1e-6,
     "over": ["s0-int8-static", "s0-int8-dynamic"], "pick": "min", "op": "<=", "target": 45, "format": "{:.2f} MB"}

- ``value``: a dotted path into results.json; ``{key}`` is replaced by each name of ``over``;
- ``reference`` (optional): a second path; the measured value is then ``reference / value``
  ("how many times faster/smaller"), ``scale`` applies to the plain value only;
- ``pick``: which of ``over`` counts (``min`` or ``max`` of the values; default the first found);
- ``op``/``target``: the test (``<=``, ``>=``, ``==``); ``informational``: reported, never a failure.

A bar whose value is absent from the results is reported as ``n/a`` (``passed: None``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}


def lookup(results: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (keys may contain '-'; a missing step gives None)."""
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _measure(spec: dict[str, Any], results: dict[str, Any], key: str | None) -> float | None:
    path = spec["value"].replace("{key}", key) if key else spec["value"]
    value = lookup(results, path)
    if isinstance(value, bool) or value is None:
        return None if value is None else float(value)
    if spec.get("reference"):
        ref = lookup(results, spec["reference"].replace("{key}", key) if key else spec["reference"])
        return None if ref is None or value == 0 else float(ref) / float(value)
    return float(value) * float(spec.get("scale", 1.0))


def check(spec: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """One bar: the measured value (picked over ``over``), and whether it meets the target."""
    if spec.get("op", "<=") not in OPS:
        raise ValueError(f"bar {spec.get('bar')!r}: unknown op {spec.get('op')!r} (known: {', '.join(OPS)})")
    keys = spec.get("over") or [None]
    found = [(k, v) for k in keys if (v := _measure(spec, results, k)) is not None]
    if spec.get("pick") in ("min", "max") and found:
        choose = min if spec["pick"] == "min" else max
        found = [choose(found, key=lambda kv: kv[1])]
    key, value = found[0] if found else (None, None)
    passed = None if value is None else bool(OPS[spec.get("op", "<=")](value, float(spec["target"])))
    return {"bar": spec["bar"].replace("{key}", key or ""), "target": f"{spec.get('op', '<=')} {spec['target']:g}",
            "measured": value, "which": key, "passed": passed, "informational": bool(spec.get("informational")),
            "measured_text": "n/a" if value is None else spec.get("format", "{:.4g}").format(value),
            "note": spec.get("note", "")}


def evaluate(specs: Sequence[dict[str, Any]], results: dict[str, Any]) -> list[dict[str, Any]]:
    return [check(spec, results) for spec in specs]


def failed(bars: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the bars that did not pass (informational ones never count)."""
    return [b["bar"] for b in bars if b["passed"] is False and not b["informational"]]
