"""Methods against the zoo's ground truth: what each paper claims its method finds, checked on a
model where we know which words matter. The figures beside the assertions are printed (run
with ``pytest -s``) so that the methods can be compared on them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import genattr
from genattr.errors import LowBeamMassWarning
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
    print(
        f"\neither, two triggers, {len(exs)} examples: xprompt k=2 finds both on {np.mean(xprompt):.0%}; "
        f"leave_one_out top-2 on {np.mean(loo):.0%}"
    )
    assert np.mean(xprompt) >= 0.9


def test_gilot_ranks_the_story_topic_first_and_kl_reports_the_decoy(zoo):
    """GiLOT with optimal transport on `story`: the topic word decides which cluster of
    interchangeable words is written (G); the shade word only moves the preference inside the
    cluster. OT, whose cost is 1 - cos between the model's embeddings, must rank the topic first;
    KL, blind to the words' similarity, is shown beside it with how often it prefers the decoy."""
    exs = examples("story", 20, seed=5)
    ot_first, kl_first, kl_decoy, ot_decoy, ot_ratio, kl_ratio = [], [], [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", LowBeamMassWarning
        )  # the beams cover little mass at J = 10 here, as expected
        for ex in exs:
            topic, shade = ex.ground_truth[0], ex.info["shade"]
            ot = genattr.explain(zoo, ex.prompt, method="gilot")
            kl = genattr.explain(zoo, ex.prompt, method="gilot", distance="kl")
            ot_first.append(ground_truth.pointing_game(ot, ex.ground_truth))
            kl_first.append(ground_truth.pointing_game(kl, ex.ground_truth))
            ot_decoy.append(ot.scores[shade] > ot.scores[topic])
            kl_decoy.append(kl.scores[shade] > kl.scores[topic])
            ot_ratio.append(ot.scores[shade] / ot.scores[topic])
            kl_ratio.append(kl.scores[shade] / kl.scores[topic])
    print(
        f"\nstory, {len(exs)} examples: topic ranked first by OT on {np.mean(ot_first):.0%}, by KL on "
        f"{np.mean(kl_first):.0%}; shade decoy above the topic: OT {np.mean(ot_decoy):.0%}, KL {np.mean(kl_decoy):.0%}; "
        f"shade score / topic score: OT {np.mean(ot_ratio):.3f}, KL {np.mean(kl_ratio):.3f}"
    )
    assert np.mean(ot_first) >= 0.9
