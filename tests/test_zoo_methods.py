"""Methods against the zoo's ground truth: what each paper claims its method finds, checked on a
model where we know which words matter. The figures beside the assertions are printed (run
with ``pytest -s``) so that the comparisons the issues ask for can be reported."""

from __future__ import annotations

import numpy as np
import pytest

import genattr
from genattr.evaluate import ground_truth
from genattr.zoo import examples


@pytest.fixture(scope="module")
def zoo():
    return genattr.load("zoo")


def test_xprompt_recovers_both_redundant_triggers(zoo):
    """XPrompt (k = 2) on `either` prompts with two triggers: removing one trigger changes
    little, removing both flips the answer, so only a joint search finds the pair."""
    exs = examples("either", 30, seed=21, triggers=2)
    xprompt, loo = [], []
    for ex in exs:
        res = genattr.explain(zoo, ex.prompt, target=ex.answer, method="xprompt", k=2, seed=0)
        xprompt.append(set(res.extras["chosen"]) == set(ex.ground_truth))
        base = genattr.explain(zoo, ex.prompt, target=ex.answer, method="leave_one_out")
        loo.append(ground_truth.joint_success(base, ex.ground_truth))
    print(f"\neither, two triggers, {len(exs)} examples: xprompt k=2 finds both on {np.mean(xprompt):.0%}; "
          f"leave_one_out top-2 on {np.mean(loo):.0%}")
    assert np.mean(xprompt) >= 0.9
