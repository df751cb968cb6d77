"""The promotion decision's one-line message says what the gate compared, or that it compared
nothing (a first promotion), instead of printing 'AUC n/a' for both sides."""

from __future__ import annotations

from recicl.promotion import PromotionDecision


def decision(**changes) -> PromotionDecision:
    fields = dict(
        promoted=True, name="recicl", alias="champion", candidate="2", champion="1", period=9,
        candidate_auc=0.81234, champion_auc=0.8, tolerance=0.0,
    )  # fmt: skip
    return PromotionDecision(**{**fields, **changes})


def test_first_promotion_says_there_was_nothing_to_compare():
    message = decision(champion=None, candidate_auc=None, champion_auc=None, period=None).message()
    assert message.startswith("promoted recicl@champion → v2")
    assert "no holder" in message and "n/a" not in message


def test_compared_promotion_and_refusal_show_both_aucs():
    assert "0.8123" in decision().message() and "v1 AUC 0.8000" in decision().message()
    refused = decision(promoted=False, candidate_auc=0.7).message()
    assert refused.startswith("refused: recicl@champion stays on v1") and "0.7000" in refused


def test_forced_first_promotion_keeps_the_reason():
    message = decision(champion=None, forced=True, reason="bootstrap").message()
    assert message.startswith("forced recicl@champion → v2 (bootstrap)")
