"""results.json: JSON-ready values, the schema (`results_schema.json`, JSON Schema draft 2020-12) and the summary
table."""

from __future__ import annotations

import json
from collections.abc import Mapping

import jsonschema

from ...processing import strict_json
from .settings import SCHEMA_PATH


def json_ready(value):
    """``value`` with numpy scalars and arrays as Python values and non-finite floats as None (strict JSON)."""
    return strict_json.finite(value)


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return json.load(handle)


def validate_json(instance, schema: Mapping, root: Mapping | None = None) -> list[str]:
    """Errors of ``instance`` against ``schema`` (JSON Schema 2020-12, checked by `jsonschema`), each as
    "<JSON path>: <message>", in path order; an empty list means valid. ``root`` is the document whose ``$defs`` the
    references of a sub-schema point to (``#/$defs/...``)."""
    if root is not None and "$defs" in root:
        schema = {**schema, "$defs": root["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda error: [str(p) for p in error.absolute_path])
    return [f"{error.json_path}: {error.message}" for error in errors]


def _fmt(fig: Mapping | None, signed: bool = False) -> str:
    if not fig or fig.get("value") is None:
        return "-"
    value = f"{fig['value']:+.3f}" if signed else f"{fig['value']:.3f}"
    if fig.get("low") is None:
        return value
    return f"{value} [{fig['low']:.3f}, {fig['high']:.3f}]"


def _summary_rows(results: Mapping) -> list[tuple]:
    """(suite, item, figure, score, floor name, floor value, score - floor) rows of the headline figures."""
    rows = []

    def add(suite, item, block):
        if not block or "score" not in block:
            return
        name = block["headline"]
        score = block["score"].get(name) or next(iter(block["score"].values()))
        floors = list(block["floors"]) or [None]
        for k, floor in enumerate(floors):
            floor_fig = (
                None
                if floor is None
                else (block["floors"][floor].get(name) or next(iter(block["floors"][floor].values())))
            )
            rows.append(
                (
                    suite if k == 0 else "",
                    item if k == 0 else "",
                    name if k == 0 else "",
                    _fmt(score) if k == 0 else "",
                    floor or "-",
                    _fmt(floor_fig) if floor else "-",
                    _fmt(block["differences"].get(floor), signed=True) if floor else "-",
                )
            )

    suites = results.get("suites", {})
    for suite in ("foils", "winoground"):
        for item, block in suites.get(suite, {}).get("phenomena", {}).items():
            add(suite, item, block)
    for task, block in suites.get("probes", {}).get("tasks", {}).items():
        headline = block["headline"]
        add("probes", f"{task} ({headline['representation']}, layer {headline['layer']})", headline)
    crossmodal = suites.get("crossmodal", {})
    for item, block in crossmodal.get("masked_word", {}).items():
        add("crossmodal", f"masked word: {item}", block)
    if "score" in crossmodal.get("mim", {}):
        add("crossmodal", "MIM loss", crossmodal["mim"])
    grounding = suites.get("grounding", {})
    for item in ("pointing", "occlusion"):
        add("grounding", item, grounding.get(item))
    frequency = suites.get("frequency", {})
    if frequency:
        slope = frequency["slope"]
        add(
            "frequency",
            "slope per decade",
            {
                "headline": "acc_r",
                "score": {"acc_r": slope["score"]},
                "floors": {k: {"acc_r": v} for k, v in slope["floors"].items()},
                "differences": slope["differences"],
            },
        )
        for bucket in frequency["buckets"]:
            add(
                "frequency", f"bucket {bucket['bucket']} ({bucket['count_low']:.0f}-{bucket['count_high']:.0f})", bucket
            )
        add("frequency", "held-out pairs", frequency.get("held_out"))
    add("itm", "matched or not", suites.get("itm"))
    gitm = suites.get("gitm", {})
    if "score" in gitm:
        add("gitm", f"{gitm['grid']['gitm_rows']}x{gitm['grid']['gitm_cols']} {gitm['grid']['gitm_mode']}", gitm)
        add(
            "gitm",
            "hard - easy distractors",
            {"headline": "accuracy", "score": {"accuracy": gitm["hard_minus_easy"]}, "floors": {}, "differences": {}},
        )
    return rows


def summary_table(results: Mapping) -> str:
    """A readable table of the headline figures: score [95 % CI], each floor, score - floor [95 % CI]."""
    header = ("suite", "item", "figure", "score [95% CI]", "floor", "floor value", "score - floor [95% CI]")
    rows = [header] + _summary_rows(results)
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = results.get("item_counts", {})
    lines.append("")
    lines.append("items: " + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int)))
    benchmark = results.get("benchmark")
    if benchmark:
        lines.append(
            f"benchmark {benchmark['name']}: {benchmark['n_items']} of {benchmark['n_records']} records "
            f"evaluated, {benchmark['n_skipped']} skipped {benchmark['skipped_by_reason']}"
        )
    return "\n".join(lines)
