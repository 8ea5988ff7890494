import torch

from dat_lightning.callbacks.ema import WarmupEMA, warmup_ema_decay


def test_warmup_decay_hand_values():
    assert warmup_ema_decay(0) == 0.1
    assert abs(warmup_ema_decay(1) - 2 / 11) < 1e-12
    assert warmup_ema_decay(10_000) == 0.999
    assert torch.allclose(warmup_ema_decay(torch.tensor(0.0)), torch.tensor(0.1))


def test_warmup_ema_avg_fn_uses_update_count():
    cb = WarmupEMA(max_decay=0.999)
    avg = cb._kwargs["avg_fn"]
    out = avg(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor(1))
    assert torch.allclose(out, torch.tensor([2 / 11]))
