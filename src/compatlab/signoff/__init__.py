"""The release sign-off: which rollout rings an update may enter, from a run and a policy.

``compatlab signoff RUN_DIR --policy configs/rollout.yaml`` reads the run's results.json, applies
the policy and writes ``signoff.json`` and ``signoff.html`` beside the report::

    policy.py   the rollout policy file: rings, what each requires (errors at file:line)
    decide.py   pure: each cell judged per ring, each ring's go, the blast radius
    render.py   signoff.json, signoff.html (Jinja2, autoescaped) and the printed summary

:func:`sign_off` is the command's work without the argument parsing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from compatlab.signoff.decide import CellCheck, RingDecision, SignOff, decide, judge
from compatlab.signoff.policy import Policy, Ring, Selector, load_policy
from compatlab.signoff.render import (
    SIGNOFF_HTML,
    SIGNOFF_JSON,
    headline,
    signoff_document,
    summary_lines,
    write_signoff,
)

__all__ = [
    "SIGNOFF_HTML",
    "SIGNOFF_JSON",
    "CellCheck",
    "Policy",
    "Ring",
    "RingDecision",
    "Selector",
    "SignOff",
    "decide",
    "headline",
    "judge",
    "load_policy",
    "sign_off",
    "signoff_document",
    "summary_lines",
    "write_signoff",
]


def sign_off(
    run_dir: Path, policy_path: Path, *, target: str | None = None, now: datetime | None = None
) -> tuple[SignOff, Path]:
    """Decide on ``run_dir``'s results under the policy and write the sign-off beside them.

    Returns the decision and the page's path. Bad input (policy, results, a ``target`` that is
    not a ring) is a :class:`~compatlab.errors.InputError` naming the file.
    """
    from compatlab.errors import PolicyError
    from compatlab.report import load_results

    policy = load_policy(policy_path)
    if target is not None and target not in {r.name for r in policy.rings}:
        raise PolicyError(
            f"--ring {target}: the policy has no such ring",
            file=policy_path,
            hint=f"rings: {', '.join(r.name for r in policy.rings)}",
        )
    results = load_results(run_dir)
    decision = decide(
        policy, results.cells, complete=results.run.finished is not None, target=target
    )
    page, _ = write_signoff(
        run_dir, decision, results.run, results.cells, written=now or datetime.now(UTC)
    )
    return decision, page
