"""CTR layers against their plain definitions, and the models' shapes and gradients."""

import pytest
import torch

from semrec.models.ctr.layers import FM, BilinearFusion, CrossNet, FeatureGating, fm_pairwise
from semrec.models.ctr.models import MODELS, build_ctr


def test_fm_equals_the_sum_over_field_pairs():
    e = torch.randn(7, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(FM()(e), fm_pairwise(e))


def test_crossnet_equals_its_recurrence():
    torch.manual_seed(0)
    net = CrossNet(6, 2).double()
    x0 = torch.randn(4, 6, dtype=torch.float64)
    x = x0
    for layer in range(2):
        w, b = net.w[layer].weight[0], net.b[layer]
        x = x0 * (x @ w)[:, None] + b + x  # x_{l+1} = x0 x_l^T w_l + b_l + x_l
    torch.testing.assert_close(net(x0), x)


@pytest.mark.parametrize("heads,out", [(1, 1), (2, 1), (4, 3)])
def test_bilinear_fusion_equals_the_written_out_bilinear_form(heads, out):
    torch.manual_seed(1)
    fuse = BilinearFusion(8, 12, heads=heads, output_dim=out).double()
    o1, o2 = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    w = fuse.bilinear()  # (heads, h1, out, h2)
    h1, h2 = 8 // heads, 12 // heads
    ref = fuse.w1(o1) + fuse.w2(o2)
    for h in range(heads):
        a, b = o1[:, h * h1:(h + 1) * h1], o2[:, h * h2:(h + 1) * h2]
        ref = ref + torch.einsum("bi,ikj,bj->bk", a, w[h], b)
    torch.testing.assert_close(fuse(o1, o2), ref)


def test_feature_gating_scales_each_input_by_0_to_2():
    torch.manual_seed(2)
    gate = FeatureGating(6, 4, [8])
    x = torch.ones(3, 6)
    g = gate(x)
    assert g.shape == (3, 6) and (g > 0).all() and (g < 2).all()
    assert torch.allclose(g[0], g[1])  # a learned context: the same gate for every row


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_give_one_logit_per_row_and_train(name):
    torch.manual_seed(3)
    spec = {"model": name, "n_features": 50, "n_fields": 4}
    if name != "lr":
        spec["embedding_dim"] = 4
    model = build_ctr(spec)
    ids = torch.randint(0, 50, (16, 4))
    y = (ids[:, 0] % 2).float()  # learnable from field 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(ids).shape == (16,) and float(loss.detach()) < 0.5 * first
    assert model.config["model"] == name


def test_unknown_model_or_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown CTR model 'xgb'"):
        build_ctr({"model": "xgb", "n_features": 5, "n_fields": 2})
    with pytest.raises(TypeError):
        build_ctr({"model": "lr", "n_features": 5, "n_fields": 2, "embedding_dim": 4})


def _hmi(aggregation, base="dcn", ku=3, kt=3):
    from semrec.models.ctr.models import HMI

    torch.manual_seed(4)
    small = {"finalmlp": {"mlp1": [16], "mlp2": [8], "gate_hidden": [8]}}.get(base, {"hidden": [16]})
    spec = {"model": base, "n_features": 0, "n_fields": 2, "embedding_dim": 6, **small}  # no id table
    return HMI(build_ctr(spec), [5] * ku, [7] * kt, 6, aggregation)


@pytest.mark.parametrize("base", ["dcn", "deepfm", "finalmlp"])
def test_hmi_scores_every_prefix_pair_with_the_base_model(base):
    hmi = _hmi("hmi", base).eval()
    u, t = torch.randint(0, 5, (4, 3)), torch.randint(0, 7, (4, 3))
    scores = hmi.pair_scores(u, t)
    assert scores.shape == (4, 9)
    eu = sum(hmi.user[k](u[:, k]) for k in range(2))  # user prefix of 2 levels
    et = hmi.item[0](t[:, 0])  # item prefix of 1 level
    torch.testing.assert_close(scores[:, 1 * 3 + 0], hmi.base.score(torch.stack([eu, et], dim=1)))
    torch.testing.assert_close(hmi(u, t), hmi.mix(scores).squeeze(1))


def test_hmi_aggregations_layer_and_add():
    u, t = torch.randint(0, 5, (4, 3)), torch.randint(0, 7, (4, 3))
    layer, add = _hmi("layer").eval(), _hmi("add").eval()
    assert layer.pair_scores(u, t).shape == (4, 3) and add.pair_scores(u, t).shape == (4, 1)
    full_u = sum(add.user[k](u[:, k]) for k in range(3))
    full_t = sum(add.item[k](t[:, k]) for k in range(3))
    torch.testing.assert_close(add.pair_scores(u, t)[:, 0], add.base.score(torch.stack([full_u, full_t], 1)))
    with pytest.raises(ValueError, match="HMI needs dcn, deepfm or finalmlp"):
        from semrec.models.ctr.models import HMI

        HMI(build_ctr({"model": "lr", "n_features": 5, "n_fields": 2}), [4], [4], 6)


def test_hmi_learns_a_user_item_token_affinity():
    hmi = _hmi("hmi")
    gen = torch.Generator().manual_seed(5)
    u, t = torch.randint(0, 5, (512, 3), generator=gen), torch.randint(0, 7, (512, 3), generator=gen)
    y = ((u[:, 0] + t[:, 0]) % 2).float()  # clicks depend on the first-level tokens of both sides
    opt = torch.optim.Adam(hmi.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(hmi(u, t), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3
