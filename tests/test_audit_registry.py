"""The audit's registry of checks (landscape/audit/checks.py): every ``Check`` has all its parts; a fabricated
context that breaks one thing fails exactly the check meant for it; and every committed audit of
results/sat-study re-judges from its stored evidence to the verdicts the committed tables show (and, under the
thresholds of the release that wrote it, to the verdicts stored in it)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from landscape.attack_spec import AttackSpec
from landscape.attacks import AttackTrace
from landscape.audit import BY_NAME, CHECKS, Check, Context, Thresholds, apply, rejudge, verdict

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "results" / "sat-study"
STORED = sorted((STUDY / "models").glob("*/audit.json"))

#: the thresholds the committed audits were judged under when they were written, newest first: today's;
#: before min_effect (commit a99e6d3); and before ``incomplete`` went from 0.2 to 0.5 (commit aaa3002)
RELEASES = (Thresholds(), Thresholds(min_effect=0.0), Thresholds(min_effect=0.0, incomplete=0.2))


# --- the registry --------------------------------------------------------------------------------------------

def test_every_check_has_all_its_parts():
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    assert len(BY_NAME) == len(CHECKS) == 10
    for c in CHECKS:
        assert isinstance(c, Check) and c.name.isidentifier(), c
        assert c.question.endswith("?") and len(c.question) > 10, c.name
        assert len(c.advice) > 20, c.name
        assert c.thresholds and set(c.thresholds) <= fields - {"z"}, c.name
        assert callable(c.evidence) and callable(c.judge), c.name
        assert BY_NAME[c.name] is c
        assert ("min_effect" in c.thresholds) is c.effect, c.name
    # every threshold but z is read by some check
    assert set().union(*(c.thresholds for c in CHECKS)) == fields - {"z"}


def test_the_registry_order_is_the_stored_order():
    for path in STORED:
        assert [c["name"] for c in json.loads(path.read_text())["audit"]["checks"]] == [c.name for c in CHECKS]


# --- fabricated contexts -------------------------------------------------------------------------------------

N, STEPS = 200, 8


def sound(**change) -> Context:
    """A context that passes every check: all n samples correct, no attack at eps breaks any, the unbounded
    margin PGD breaks them all, every loss trace rises and then settles, and a surrogate ran (transfer)."""
    y = torch.arange(N) % 10
    none = torch.zeros(N, dtype=torch.bool)
    rising = torch.linspace(0, 1, STEPS // 2 + 1)
    trace = torch.cat([rising, torch.ones(STEPS - STEPS // 2)]).repeat(N, 1).T.contiguous()   # (steps + 1, n)
    ctx = Context(
        attack=AttackSpec(eps=0.1, steps=STEPS), y=y, pred=y.clone(),
        randomness={"logit_change": 0.0, "predictions_differ": False, "passes": 5, "samples": N}, eot=1,
        zero_gradient=none, saturated=none, pgd=AttackTrace(torch.empty(0), trace, none, none), pgd_margin=none,
        fgsm=none, more_effort=none, effort_steps=2 * STEPS, effort_restarts=5, sweep_eps=[0.2, 0.4, 1.0],
        swept=[~none, ~none, ~none], noise=none, square=none, transferred=none)
    return dataclasses.replace(ctx, **change)


def most() -> torch.Tensor:
    """Three samples in four."""
    return torch.arange(N) % 4 != 0


def _trace_still_rising() -> AttackTrace:
    ctx = sound()
    trace = torch.linspace(0, 1, STEPS + 1).repeat(N, 1).T.contiguous()
    return dataclasses.replace(ctx.pgd, loss=trace)


BREAKS = {   # per check: what in the context breaks it, and only it
    "attack_agreement": lambda: sound(pgd_margin=most()),
    "more_effort": lambda: sound(more_effort=most()),
    "eps_sweep": lambda: sound(swept=[sound().noise] * 3),
    "loss_traces": lambda: sound(pgd=_trace_still_rising()),
    "gradients": lambda: sound(zero_gradient=most()),
    "saturated_softmax": lambda: sound(saturated=most()),
    "randomized": lambda: sound(randomness={"logit_change": 0.3, "predictions_differ": False, "passes": 5,
                                            "samples": N}),
    "black_box": lambda: sound(noise=most()),
    "transfer": lambda: sound(transferred=most()),
    "fgsm_vs_pgd": lambda: sound(fgsm=most()),
}


def test_a_sound_context_passes_every_check():
    found = apply(sound(), Thresholds())
    assert [f.name for f in found] == [c.name for c in CHECKS]
    assert all(f.passed is True for f in found), [(f.name, f.evidence["summary"]) for f in found if not f.passed]
    assert verdict(found) == "ok"


def test_the_fabricated_cases_cover_the_registry():
    assert set(BREAKS) == set(BY_NAME)


@pytest.mark.parametrize("name", list(BREAKS))
def test_a_context_that_breaks_one_thing_fails_exactly_its_check(name):
    found = apply(BREAKS[name](), Thresholds())
    assert [f.name for f in found if f.passed is False] == [name], [(f.name, f.evidence["summary"]) for f in found]
    assert verdict(found) == "suspect"
    f = next(f for f in found if f.name == name)
    assert f.advice == BY_NAME[name].advice and f.question == BY_NAME[name].question
    # stored and read back, the evidence alone gives the same outcome
    block = rejudge({"verdict": "suspect", "checks": [json.loads(json.dumps(g.to_dict())) for g in found]})
    assert [c["passed"] for c in block["checks"]] == [g.passed for g in found]


def test_transfer_without_a_surrogate_is_not_run():
    found = {f.name: f for f in apply(sound(transferred=None), Thresholds())}
    assert found["transfer"].passed is None and "not run" in found["transfer"].evidence["summary"]
    assert "n" not in found["transfer"].evidence and found["black_box"].evidence["n"] == N


def test_a_gap_under_min_effect_is_not_flagged():
    """Three of 200 samples broken by the margin PGD (every one of PGD's three survivors): a share of 1 (its
    Wilson bound 0.43 above a threshold of 0.2), an effect of 1.5% of all samples, under ``min_effect``."""
    survivors = torch.arange(N) < 3
    ctx = sound(pgd=dataclasses.replace(sound().pgd, ever_adversarial=~survivors), pgd_margin=survivors,
                swept=[~survivors, torch.ones(N, dtype=torch.bool), torch.ones(N, dtype=torch.bool)])
    found = {f.name: f for f in apply(ctx, Thresholds(attack_gap=0.2))}
    assert found["attack_agreement"].evidence["count"] == found["attack_agreement"].evidence["of"] == 3
    assert [n for n, f in found.items() if f.passed is False] == []
    found = apply(ctx, Thresholds(attack_gap=0.2, min_effect=0.0))
    assert [f.name for f in found if f.passed is False] == ["attack_agreement"]


# --- the committed study's audits ----------------------------------------------------------------------------

def test_the_committed_study_holds_its_audits():
    assert len(STORED) == 45


@pytest.mark.parametrize("path", STORED, ids=[p.parent.name for p in STORED])
def test_a_stored_audit_rejudges_to_its_stored_verdicts(path):
    """Under the thresholds of one of the releases (``RELEASES``), every check's stored outcome and the stored
    verdict come back from the stored evidence alone; re-judging is idempotent."""
    d = json.loads(path.read_text())
    stored = [c["passed"] for c in d["audit"]["checks"]]
    matches = []
    for t in RELEASES:
        block = rejudge(d, t)
        if [c["passed"] for c in block["checks"]] == stored:
            assert block["verdict"] == d["audit"]["verdict"]
            matches.append(t)
        again = rejudge({**d, "audit": block}, t)
        assert again["verdict"] == block["verdict"]
        assert [c["passed"] for c in again["checks"]] == [c["passed"] for c in block["checks"]]
    assert matches, f"{path.parent.name}: no release's thresholds give the stored verdicts {stored}"


def test_the_committed_tables_show_todays_verdicts():
    """audit.csv and per_model.csv of results/sat-study hold, per model, the verdict and flags that
    ``rejudge`` gives today (the aggregation's byte-for-byte check: tests/test_study_tables.py)."""
    audit_csv = pd.read_csv(STUDY / "audit.csv", keep_default_na=False).set_index("model")
    per_model = pd.read_csv(STUDY / "per_model.csv", keep_default_na=False)
    per_model = per_model.set_index(per_model.method + "-eps" + per_model.eps.map("{:g}".format) + "-s"
                                    + per_model.seed.astype(str))
    assert sorted(audit_csv.index) == [p.parent.name for p in STORED]
    suspect = []
    for path in STORED:
        block = rejudge(json.loads(path.read_text()))
        name, flags = path.parent.name, " ".join(c["name"] for c in block["checks"] if c["passed"] is False)
        assert audit_csv.loc[name, "verdict"] == block["verdict"], name
        assert audit_csv.loc[name, "flagged"] == flags, name
        assert per_model.loc[name, "audit_flags"] == flags, name
        assert float(per_model.loc[name, "audit_suspect"]) == float(block["verdict"] == "suspect"), name
        suspect += [name] if block["verdict"] == "suspect" else []
    assert suspect == ["h-sat-affine-eps0.4-s0", "sat-eps-eps0.4-s0", "sat-eps-eps0.4-s1", "sat-eps-eps0.4-s2",
                       "trades-eps0.3-s1"]
