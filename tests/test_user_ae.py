"""UIST user autoencoder: pooling ignores padding, the decoder is causal, and it learns to reconstruct codes."""

import pytest
import torch

from semrec.models.item_repr import SemanticItems
from semrec.models.user_ae import AdditiveAttention, UserAutoencoder

N_ITEMS, SIZES = 60, [8, 8]


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    codes = torch.cat([torch.zeros(1, 2, dtype=torch.long),
                       torch.stack([torch.arange(1, N_ITEMS + 1) % 8, torch.arange(1, N_ITEMS + 1) // 8 % 8], 1)])
    model = UserAutoencoder(SemanticItems(codes, SIZES, 16), 16, SIZES, hidden=32, layers=2, heads=2, max_len=12,
                            dropout=dropout)
    return model, codes


def test_additive_attention_ignores_padding_and_is_a_convex_mix():
    torch.manual_seed(1)
    att = AdditiveAttention(4)
    x = torch.randn(2, 5, 4)
    pad = torch.tensor([[True, True, False, False, False], [False] * 5])
    z = att(x, pad)
    x2 = x.clone()
    x2[0, :2] = 100.0  # padding content must not matter
    torch.testing.assert_close(att(x2, pad), z)
    assert (z[1] <= x[1].max(0).values + 1e-6).all() and (z[1] >= x[1].min(0).values - 1e-6).all()


def test_encoding_ignores_padding_amount_and_decoder_is_causal():
    model, _ = _model()
    model.eval()
    ids = torch.tensor([[0, 0, 0, 5, 9, 13, 2, 7, 7, 30, 41, 3]])
    # the same user with more left padding: z only sees items (positions are absolute, so compare with the
    # same alignment: padding positions themselves must not leak)
    other = ids.clone()
    other[0, :3] = torch.tensor([17, 18, 19])  # fill the padding...
    masked = torch.where(torch.arange(12) < 3, torch.zeros_like(ids), other)  # ...and pad it again
    torch.testing.assert_close(model.encode(masked), model.encode(ids))
    z = model.encode(ids)
    a = model.decode(ids, z)[0]
    changed = ids.clone()
    changed[0, 8:] = torch.tensor([1, 2, 3, 4])
    b = model.decode(changed, z)[0]
    torch.testing.assert_close(a[0, :9], b[0, :9])  # position i sees items < i only (shifted input)
    assert not torch.allclose(a[0, 9:], b[0, 9:])
    with pytest.raises(ValueError, match="row 0 has no items"):
        model.encode(torch.zeros(1, 12, dtype=torch.long))


def test_learns_to_reconstruct_item_codes():
    model, codes = _model(seed=2)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, N_ITEMS + 1, (256, 12), generator=gen)
    ids[:128, :4] = 0  # shorter users
    target = codes[ids]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.reconstruction(ids, target)
    for _ in range(150):
        loss = model(ids, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model.reconstruction(ids, target)
    acc0, acc = first["head_correct"] / first["count"], last["head_correct"] / last["count"]
    assert acc0 < 0.3 and acc > 0.6, (acc0, acc)  # chance is 1/8 per level
    assert last["count"] == int((ids > 0).sum()) and last["exact"] <= last["head_correct"]
    torch.testing.assert_close(model(ids, target, reduction="sum") / last["count"], model(ids, target))
