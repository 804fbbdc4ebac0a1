import pytest
import torch

from conftest import tiny_config
from vmoe_export.model import MobileVMoE, ModelConfig, active_params, count_params, list_configs, load_config, route
from vmoe_export.training import loss_fn


@pytest.mark.parametrize("k", [1, 2])
def test_forward_shapes(k):
    cfg = tiny_config(top_k=k)
    logits, router_logits = MobileVMoE(cfg)(torch.randn(5, 1, 8, 8))
    assert logits.shape == (5, cfg.num_classes)
    assert router_logits.shape == (5, cfg.num_experts)


def test_dense_twin_has_no_router_and_same_active_widths():
    cfg = tiny_config()
    dense = MobileVMoE(cfg.dense_twin())
    logits, router_logits = dense(torch.randn(2, 1, 8, 8))
    assert router_logits is None and logits.shape == (2, 6)
    moe = MobileVMoE(cfg)
    # MoE active params = dense params + the router's (the experts have the dense MLP's shape).
    assert active_params(moe) == count_params(dense) + count_params(moe.router)


def _manual_moe_block(blk, x, gates, experts):
    """Per image: shared attention, then the gate-weighted sum of its experts applied to *all* its tokens."""
    out = []
    for b in range(x.shape[0]):
        xb, h = blk.attend(x[b : b + 1])
        for j in range(gates.shape[1]):
            xb = xb + gates[b, j] * blk.experts[int(experts[b, j])](h)
        out.append(xb)
    return torch.cat(out)


@pytest.mark.parametrize("k", [1, 2])
def test_moe_block_mixes_gated_experts_per_image(k):
    torch.manual_seed(1)
    cfg = tiny_config(top_k=k)
    model = MobileVMoE(cfg).eval()
    x = torch.randn(6, cfg.num_patches, cfg.embed_dim)
    router_logits = torch.randn(6, cfg.num_experts) * 3
    gates, experts = route(router_logits, k)
    blk = model.moe_blocks[0]
    with torch.no_grad():
        torch.testing.assert_close(blk(x, gates, experts), _manual_moe_block(blk, x, gates, experts))


def test_gates_are_topk_softmax_probabilities():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    gates, experts = route(logits, 2)
    probs = logits.softmax(-1)[0]
    assert experts.tolist() == [[1, 2]]
    torch.testing.assert_close(gates[0], probs[[1, 2]])


def test_routing_is_per_image_not_per_token():
    """Changing one token of an image may change its route, but the whole image follows one
    route: every token's output equals the route's experts applied to that token."""
    torch.manual_seed(2)
    cfg = tiny_config(top_k=1)
    model = MobileVMoE(cfg).eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        tokens = model.trunk(images)
        router_logits = model.router(tokens)
        assert router_logits.shape == (4, cfg.num_experts)  # one decision per image
        gates, experts = route(router_logits, 1)
        blk = model.moe_blocks[0]
        out = blk(tokens, gates, experts)
        x, h = blk.attend(tokens)
        for b in range(4):
            for e in range(cfg.num_experts):
                candidate = x[b] + gates[b, 0] * blk.experts[e](h[b])
                matches = torch.isclose(candidate, out[b], atol=1e-6).all(dim=-1)  # per token
                # Either every token used expert e or none did.
                assert matches.all() == (e == int(experts[b, 0])), (b, e, matches)


def test_batch_composition_does_not_change_an_images_output():
    torch.manual_seed(3)
    model = MobileVMoE(tiny_config(top_k=2)).eval()
    images = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        full, _ = model(images)
        single = torch.cat([model(images[i : i + 1])[0] for i in range(7)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)


def test_loss_includes_weighted_router_term():
    torch.manual_seed(4)
    logits, router_logits = torch.randn(8, 6), torch.randn(8, 3, requires_grad=True)
    labels = torch.randint(0, 6, (8,))
    sc = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, cls, rloss = loss_fn(logits, router_logits, labels, sc, 0.3)
    expected_router = torch.nn.functional.cross_entropy(router_logits, sc[labels])
    torch.testing.assert_close(rloss, expected_router.detach())
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels) + 0.3 * expected_router)
    loss.backward()
    assert router_logits.grad.abs().sum() > 0
    loss0, _, _ = loss_fn(logits, router_logits, labels, sc, 0.0)
    torch.testing.assert_close(loss0, cls)


def test_shipped_and_paper_configs_load():
    names = list_configs()
    assert "fmnist-tiny" in names and "vit-12x192-moe" in names
    tiny = load_config("vit-12x192-moe")
    assert (tiny.depth, tiny.embed_dim, tiny.num_experts, tiny.moe_layers) == (12, 192, 10, 2)


def test_invalid_config_is_rejected_with_reason():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_config(image_size=9)
    with pytest.raises(ValueError, match="top_k"):
        tiny_config(top_k=4)
    with pytest.raises(FileNotFoundError, match="known configs"):
        load_config("no-such-config")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"bogus": 1})
