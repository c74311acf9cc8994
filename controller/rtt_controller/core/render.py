"""Human renderings of plans: plain text for terminals, Markdown for pull-request comments.

Pure string building over a `Plan`; the CLI picks one by `--format`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rtt_controller.core.plan import Plan

_MAX_ROWS = 200  # a PR comment stays readable; the full plan is in the JSON


def _link(link: Mapping[str, Any]) -> str:
    return f"{link['from']} -> {link['to']} [{link['class']}, {link['lane']}]"


def _change(change: Mapping[str, Any]) -> str:
    old, new = change["old"], change["new"]
    fields = [k for k in ("lane", "from_node", "to_node", "version", "caps", "qos")
              if old[k] != new[k]]
    detail = ", ".join(f"{k}: {old[k]} → {new[k]}" for k in fields)
    return f"{new['from']} -> {new['to']} [{new['class']}] ({detail})"


def text(plan: Plan) -> str:
    c = plan.content
    lines = [
        f"plan {plan.plan_id}",
        f"  base    {c['base_graph_hash']}",
        f"  desired {c['desired_graph_hash']}",
        f"  policy  {c['policy_hash']}",
        f"  planner v{c['planner']['version']} ({c['planner']['algorithm']}, "
        f"{plan.provenance.backend})",
    ]
    if plan.provenance.commit:
        lines.append(f"  source  {plan.provenance.commit} ({plan.provenance.created_at})")
    if plan.empty:
        lines.append("no changes: the desired graph equals the base")
        return "\n".join(lines) + "\n"
    lines.append(f"{len(c['routes_add'])} to add, {len(c['routes_del'])} to delete, "
                 f"{len(c['routes_change'])} to change, in {len(c['batches'])} batch(es)")
    for n, batch in enumerate(c["batches"], 1):
        lines.append(f"batch {n}:")
        for step_id in batch:
            step = c["steps"][step_id]
            section, index = step["ref"].split("/")
            entry = c[section][int(index)]
            shown = _change(entry) if step["op"] == "update" else _link(entry)
            sign = {"add": "+", "del": "-", "update": "~"}[step["op"]]
            lines.append(f"  {step_id:>5} {sign} {shown}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class CanaryStep:
    """One canary step as a pull-request comment shows it."""

    percent: int  # the policy step it stands for
    batches: int  # the plan's batches applied when it is judged
    changes: int  # route changes applied by then


def markdown(plan: Plan, *, title: str = "RTT plan",
             canary: Sequence[CanaryStep] | None = None, window_s: float | None = None) -> str:
    """`canary`: the steps the rollout will judge (None: no canary, as policy says)."""
    c = plan.content
    out = [f"### {title}", "", f"**Plan** `{plan.plan_id}`", ""]
    if plan.empty:
        out += ["No route changes: the desired graph equals the base.", ""]
    for heading, rows in (("Added", [_link(r) for r in c["routes_add"]]),
                          ("Removed", [_link(r) for r in c["routes_del"]]),
                          ("Changed", [_change(r) for r in c["routes_change"]])):
        if not rows:
            continue
        out += [f"#### {heading} ({len(rows)})", ""]
        out += [f"- `{row}`" for row in rows[:_MAX_ROWS]]
        if len(rows) > _MAX_ROWS:
            out.append(f"- … and {len(rows) - _MAX_ROWS} more (see the plan JSON)")
        out.append("")
    if c["batches"]:
        out += ["#### Batches", "", "| batch | steps |", "|---|---|"]
        out += [f"| {n} | {', '.join(batch)} |" for n, batch in enumerate(c["batches"], 1)]
        out.append("")
    if c["batches"] and canary is not None:
        total = len(plan.steps)
        every = f", each judged over {window_s:g} s windows" if window_s else ""
        out += [f"#### Canary ({len(canary)} step{'s' if len(canary) > 1 else ''}{every})", "",
                "| step | batches applied | route changes applied |", "|---|---|---|"]
        out += [f"| {s.percent}% | {s.batches} of {len(c['batches'])} | {s.changes} of {total} |"
                for s in canary]
        out.append("")
    elif c["batches"]:
        out += ["#### Canary", "", "None: policy applies the plan at once (`rollout.canary: "
                "false`), then verifies it.", ""]
    out += [
        "<details><summary>Hashes</summary>", "",
        f"- base graph: `{c['base_graph_hash']}`",
        f"- desired graph: `{c['desired_graph_hash']}`",
        f"- policy: `{c['policy_hash']}`",
        f"- planner: v{c['planner']['version']}, {c['planner']['algorithm']}",
        "", "</details>", "",
    ]
    return "\n".join(out)
