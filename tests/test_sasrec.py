import torch

from semrec.models.item_repr import IDItems, JointSemanticItems, SemanticItems, UnifiedItems
from semrec.models.sasrec import SASRec
from semrec.quant import RQVAE
from semrec.quant.distances import resolve_distances
from helpers import clustered


def _model(items=None, n=50):
    torch.manual_seed(0)
    return SASRec(items or IDItems(n, 16), hidden=16, layers=2, heads=2, max_len=8, dropout=0.0).eval()


def test_causal_outputs_do_not_see_later_items():
    m = _model()
    a = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[0, 5:] = torch.tensor([40, 41, 42])  # change items after position 4
    ha, hb = m(a), m(b)
    torch.testing.assert_close(ha[:, :5], hb[:, :5])  # padding positions included
    assert not torch.allclose(ha[:, 5:], hb[:, 5:])


def test_padding_does_not_change_states():
    """Whatever the padded positions hold (here: different position embeddings there), the states of the
    real items are the same: the attention mask keeps padding out."""
    m = _model()
    ids = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    before = m(ids)[:, 5:]
    with torch.no_grad():
        m.pos.weight[:5] += torch.randn(5, 16)  # changes only what the five padding positions carry
    after = m(ids)[:, 5:]
    torch.testing.assert_close(before, after)
    unmasked = m.encode(torch.ones_like(ids), m.items(ids))[:, 5:]  # a mask that lets padding in ...
    assert not torch.allclose(after, unmasked, atol=1e-4)  # ... does change them: the test can fail
    assert torch.isfinite(m(torch.zeros(1, 8, dtype=torch.long))).all()


def test_loss_trains_and_scores_shapes():
    m = _model()
    m.train()
    ids = torch.randint(1, 51, (4, 8))
    pos = torch.randint(1, 51, (4, 8))
    neg = torch.randint(1, 51, (4, 8))
    loss = m(ids, pos, neg)
    loss.backward()
    assert loss.item() > 0 and m.pos.weight.grad is not None
    m.eval()
    assert m.score(ids, torch.randint(1, 51, (4, 100))).shape == (4, 100)
    assert m.score_all(ids).shape == (4, 51)


def test_item_representations():
    codes = torch.tensor([[0, 0], [1, 2], [1, 2], [3, 0]])  # items 1 and 2 collide
    sem = SemanticItems(codes, [4, 4], 6)
    v = sem(torch.tensor([0, 1, 2, 3]))
    assert torch.equal(v[0], torch.zeros(6)) and torch.equal(v[1], v[2]) and not torch.equal(v[1], v[3])
    uni = UnifiedItems(SemanticItems(codes, [4, 4], 4), n_items=3, id_dim=2)
    u = uni(torch.tensor([1, 2]))
    assert u.shape == (2, 6) and torch.equal(u[0, :4], u[1, :4]) and not torch.equal(u[0, 4:], u[1, 4:])
    assert uni.all_items().shape == (4, 6)


def test_joint_items_train_the_rqvae_through_the_recommender():
    x = clustered(n=60, d=12)
    q = RQVAE(levels=2, codebook_size=4, latent_dim=6, hidden=[16], epochs=2, seed=0).fit(x)
    text = torch.cat([torch.zeros(1, 12), torch.from_numpy(x)])
    joint = JointSemanticItems(text, q.module, resolve_distances("hybrid", 2), dim=14)
    m = _model(UnifiedItems(joint, n_items=60, id_dim=2), n=60).train()
    before = q.module.encoder[0].weight.detach().clone()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    ids = torch.randint(1, 61, (8, 8))
    loss = m(ids, torch.randint(1, 61, (8, 8)), torch.randint(1, 61, (8, 8)))
    assert joint.aux_loss is not None and joint.aux_loss.item() > 0
    loss.backward()
    opt.step()
    assert not torch.equal(before, q.module.encoder[0].weight)
    assert joint.codes().shape == (61, 2)


def test_transformer_block_equals_torch_reference():
    """The written-out block (fast dropout) equals nn.TransformerEncoderLayer with the same weights."""
    from semrec.models.layers import TorchReferenceBlock, TransformerBlock

    torch.manual_seed(0)
    hidden, heads = 16, 2
    block = TransformerBlock(hidden, heads, dropout=0.3).eval()
    for p in block.parameters():  # non-trivial weights everywhere (biases and norms start at 0 / 1)
        torch.nn.init.normal_(p.data, std=0.2)
    ref = TorchReferenceBlock(block).eval()
    assert ref.layer.self_attn.in_proj_weight.data_ptr() != block.qkv.weight.data_ptr()  # a copy, not shared
    m = _model()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 9, 2]])
    mask = m.attention_mask(ids)  # (B, 1, L, L)
    x = torch.randn(2, 8, hidden)
    expected = ref.layer(x, src_mask=mask.expand(-1, heads, -1, -1).reshape(2 * heads, 8, 8))
    torch.testing.assert_close(block(x, mask), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref(x, mask), expected)


def test_dropout_keeps_expected_fraction_and_mean():
    from semrec.models.layers import Dropout

    torch.manual_seed(0)
    d = Dropout(0.3)
    x = torch.ones(200_000)
    y = d(x)
    assert abs((y > 0).float().mean().item() - 0.7) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(d.eval()(x), x)
    try:
        Dropout(1.0)
    except ValueError as e:
        assert "dropout" in str(e)
    else:
        raise AssertionError("p = 1 accepted")
