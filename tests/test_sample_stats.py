"""Pixel saturation and class agreement of samples, against hand counts; agreement appears in the
sample-quality scores only when the extractor judges the data's classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dat_lightning.metrics.quality import SampleQuality
from dat_lightning.metrics.sample_stats import class_agreement, saturation, saturation_counts


def test_saturation_counts_8_bit_pixels_at_each_end():
    x = torch.tensor([[[[1.0, 0.999, 0.0, 0.001], [0.5, 1.2, -0.1, 0.3]]]])
    # 8-bit: 255, round(254.7)=255, 0, round(0.255)=0, 128, 255 (clamped), 0 (clamped), 77
    counts = saturation_counts(x)
    assert counts.tolist() == [3, 3, 8]
    assert saturation(counts + saturation_counts(torch.full((1, 1, 2, 2), 0.5))) == {
        "pixels_at_max": 3 / 12, "pixels_at_min": 3 / 12}


def test_class_agreement_is_the_share_predicted_as_drawn():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 0.5]])
    assert class_agreement(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="3 predictions for 4 labels"):
        class_agreement(logits[:3], torch.tensor([0, 1, 1, 1]))


class Judge(nn.Module):
    """Features = the flattened image; its head reads class c from the mean of pixel block c."""

    num_features = 4
    name = "toy_judge"
    classifies = "toy"

    def forward(self, x):
        return x.flatten(1)

    def logits_from_features(self, features):
        return features


def test_sample_quality_reports_agreement_only_for_a_judge_of_these_classes():
    real = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    fake = torch.eye(4).repeat(3, 1).view(12, 1, 2, 2)  # item i lights pixel i % 4
    fake[1] = torch.tensor([1.0, 0, 0, 0]).view(1, 2, 2)  # item 1 (class 1) looks like class 0
    judged = SampleQuality(Judge(), real, inception_score=False, judged_classes=4)([fake])
    assert judged["agreement_toy_judge"] == pytest.approx(11 / 12)
    plain = SampleQuality(Judge(), real, inception_score=False)([fake])
    assert "agreement_toy_judge" not in plain
