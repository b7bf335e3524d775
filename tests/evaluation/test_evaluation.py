"""evaluation/metrics.py on tiny inputs with known answers: the metric formulas (a stand-in masked
model with fixed logit differences), size, curve area, F at a size, Jaccard overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskshare.config import Ablation, ErrorTerm
from maskshare.evaluation.metrics import (
    curve_area,
    evaluate_masks,
    f_at_size,
    jaccard,
    size_metrics,
    subset_metrics,
)


class FixedLD:
    """Stands in for a MaskedModel: per-prompt ld fixed per kind of mask."""

    ablation, error, n_slots = Ablation.SLOT_MEAN, ErrorTerm.DROP, 3

    def __init__(self, full, empty, circuit, complement, clean):
        self.saes = {"h": type("S", (), {"cfg": type("C", (), {"d_sae": 2})})()}
        self.by_sum = {4.0: full, 0.0: empty}  # full / empty masks by their kept count
        self.circuit, self.complement, self.clean = circuit, complement, clean

    def logit_diffs(self, batches, masks):
        kept = float(masks["h"][1:].sum())
        if kept in self.by_sum:
            return np.asarray(self.by_sum[kept], float)
        return np.asarray(self.circuit if masks["h"][1, 0] > 0.5 else self.complement, float)

    def logit_diffs_many(self, batches, masks):
        return [self.logit_diffs(batches, m) for m in masks]

    def clean_logit_diffs(self, batches):
        return np.asarray(self.clean, float)


CIRCUIT = {"h": torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])}  # slot 1 keeps latent 0


def test_faithfulness_completeness_and_vs_clean_formulas():
    mm = FixedLD(full=[3.0, 5.0], empty=[1.0, 1.0], circuit=[2.0, 4.0],
                 complement=[1.5, 1.5], clean=[6.0, 6.0])
    # one "batch" of two prompts
    out = evaluate_masks(mm, [[0, 1]], CIRCUIT, slots=[np.array([0, 1, 2]), np.array([0, 1])])
    # ld(M) = 4, ld(empty) = 1, ld(C) = 3, ld(complement) = 1.5, ld(M_clean) = 6
    assert out["faithfulness"] == pytest.approx((3 - 1) / (4 - 1))
    assert out["completeness"] == pytest.approx((1.5 - 1) / (4 - 1))
    assert out["faithfulness_vs_clean"] == pytest.approx((3 - 1) / (6 - 1))
    assert out["per_prompt"]["ld_circuit"] == [2.0, 4.0]
    assert out["n_prompts"] == 2 and "note" not in out
    # tokens 1 (slot 1) and 2 (slot 2), 1 (slot 1): 1 + 0 + 1 latents over 3 tokens
    assert out["latents_per_token"] == pytest.approx(2 / 3)


def test_a_subset_of_the_prompts_is_scored_from_their_own_lds():
    mm = FixedLD(full=[3.0, 5.0, 9.0], empty=[1.0, 1.0, 1.0], circuit=[2.0, 4.0, 1.0],
                 complement=[1.5, 1.5, 1.5], clean=[6.0, 6.0, 6.0])
    slots = [np.array([0, 1, 2]), np.array([0, 1]), np.array([0, 2, 2])]
    full = evaluate_masks(mm, [[0, 1, 2]], CIRCUIT, slots=slots)
    sub = subset_metrics(full, [0, 1], CIRCUIT, slots[:2])
    alone = evaluate_masks(FixedLD(full=[3.0, 5.0], empty=[1.0, 1.0], circuit=[2.0, 4.0],
                                   complement=[1.5, 1.5], clean=[6.0, 6.0]),
                           [[0, 1]], CIRCUIT, slots=slots[:2])
    alone.pop("per_prompt")
    assert sub == alone  # the same as evaluating those two prompts on their own
    assert sub["faithfulness"] == pytest.approx(2 / 3) != full["faithfulness"]


def test_undefined_ratios_are_none_with_a_note():
    mm = FixedLD(full=[1.0], empty=[1.0], circuit=[2.0], complement=[1.0], clean=[1.0])
    out = evaluate_masks(mm, [[0]], CIRCUIT, slots=[np.array([0, 1])])
    assert out["faithfulness"] is None and out["completeness"] is None
    assert out["faithfulness_vs_clean"] is None
    assert "faithfulness undefined" in out["note"] and "vs clean undefined" in out["note"]


def test_size_ignores_bos_and_padding_and_handles_no_tokens():
    m = {"a": torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
         "b": torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])}
    s = size_metrics(m, [np.array([0, 1, 1, -1, -1]), np.array([0, 2])])
    # kept per slot: slot 1 -> 2 + 1 = 3, slot 2 -> 0 + 2 = 2; tokens: slot 1 x2, slot 2 x1
    assert s["n_tokens"] == 3 and s["latents_per_token"] == pytest.approx((2 * 3 + 2) / 3)
    assert s["circuit_size"] == 5 and s["slots_used"] == 2
    assert s["kept_per_hook"] == {"a": 2, "b": 3} and s["distinct_latents"] == 2 + 2
    empty = size_metrics(m, [np.array([0])])
    assert empty["latents_per_token"] is None and empty["circuit_size"] == 0


def test_curve_area_is_mean_clipped_f_over_log_size():
    # linear in log10 size from 0 to 1 over one decade, then flat at 1 for another
    assert curve_area([1, 10, 100], [0.0, 1.0, 1.0]) == pytest.approx(0.75, abs=1e-3)
    # F outside [0, 1] is clipped; None and non-positive sizes are skipped
    assert curve_area([1, 10, 0, 5], [-1.0, 2.0, 0.5, None]) == pytest.approx(0.5, abs=1e-3)
    # held at the end values outside the points
    assert curve_area([10], [0.4], x_range=(1, 100)) == pytest.approx(0.4)
    assert curve_area([10, 100], [0.2, 0.6], x_range=(1, 1000)) == \
        pytest.approx((0.2 + 0.4 + 0.6) / 3, abs=1e-3)
    assert curve_area([1], [math.nan]) is None


def test_f_at_size_interpolates_in_log_size_and_never_extrapolates():
    assert f_at_size([1, 100], [0.0, 1.0], 10) == pytest.approx(0.5)
    assert f_at_size([1, 100], [0.0, 1.0], 100) == pytest.approx(1.0)
    assert f_at_size([100, 1], [1.0, 0.0], 10) == pytest.approx(0.5)  # unsorted input
    assert f_at_size([1, 100], [0.0, 1.0], 0.5) is None
    assert f_at_size([1, 100], [None, None], 10) is None


def test_jaccard_over_triples_and_latents_skips_bos():
    a = {"x": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]),
         "y": torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}
    b = {"x": torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
         "y": torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])}
    # triples (non-BOS): a = {x(1,0), y(1,1)}, b = {x(2,0), y(1,1)} -> 1 / 3
    assert jaccard(a, b) == pytest.approx(1 / 3)
    # latents: a = {x0, y1}, b = {x0, y1} -> 1
    assert jaccard(a, b, level="latents") == pytest.approx(1.0)
    assert jaccard(a, a) == 1.0
