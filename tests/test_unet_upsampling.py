"""The U-Net's bed-of-nails upsampling ("unpool", SegNet's decoder): the encoder's max pooling
returns its argmax positions and the decoder puts its values back exactly there
(``nn.MaxUnpool2d``), then convolves; skip connections as in the other modes.

Shapes (odd image sizes through the predictor), gradients, that the indices are really used,
the model folder round trip and the TorchScript export of the bioimage.io path. Tiny networks,
one CPU thread.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cnnvision.backends.unet.io import load_model, read_config, save_model  # noqa: E402
from napari_cnnvision.backends.unet.model import UPSAMPLING, UNetConfig, _unpool, build_unet  # noqa: E402
from napari_cnnvision.backends.unet.predict import predict_probs, segment  # noqa: E402
from napari_cnnvision.core.registry import read_card  # noqa: E402

torch.set_num_threads(1)


def _net(mode="unpool", seed=0, **kw):
    torch.manual_seed(seed)
    return build_unet(UNetConfig(**{"depth": 2, "base_filters": 4, "upsampling": mode, **kw}))


def _capture_upsampled(net):
    """Record, per decoder level, the encoder features the indices come from and the map the
    upsampling step hands on before its convolution (unpool: MaxUnpool2d's output; the other
    modes: the resampled map)."""
    seen = {"skip": [], "up": []}
    hooks = [net.pool.register_forward_pre_hook(lambda m, a: seen["skip"].append(a[0].detach()))]
    for up in net.up:
        mod = up.unpool if up.mode == "unpool" else up.up[0]
        hooks.append(mod.register_forward_hook(lambda m, a, out: seen["up"].append(out.detach())))
    return seen, hooks


def _share_at_argmax(skip, upsampled):
    """Share of the 2x2 pooling cells whose upsampled values are zero everywhere except at the
    cell's maximum of the encoder feature (bed of nails at the argmax)."""
    n, c, h, w = skip.shape
    cells = lambda t: t.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    arg = cells(skip).argmax(-1, keepdim=True)
    u = cells(upsampled)
    only_there = (u != 0).sum(-1) == (torch.gather(u, -1, arg).squeeze(-1) != 0).long()
    nonzero_at_arg = torch.gather(u, -1, arg).squeeze(-1) != 0
    return float((only_there & nonzero_at_arg).float().mean())


# --- the mode exists, is validated, maps shapes ----------------------------------------
def test_unpool_is_a_configurable_mode_with_maxunpool_and_index_pooling():
    assert "unpool" in UPSAMPLING
    net = _net(depth=3)
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds.count("MaxUnpool2d") == 3 and "Upsample" not in kinds and "ConvTranspose2d" not in kinds
    assert net.pool.return_indices
    assert not _net("bilinear").pool.return_indices  # the other modes keep the plain pooling
    with pytest.raises(ValueError, match="unpool"):
        UNetConfig(upsampling="unpooling")


@pytest.mark.parametrize("depth,shape,channels", [(1, (2, 6), 1), (2, (12, 20), 3), (3, (40, 24), 2),
                                                  (4, (16, 48), 1)])
def test_network_shapes(depth, shape, channels):
    net = _net(depth=depth, in_channels=channels).eval()
    with torch.inference_mode():
        out = net(torch.rand(2, channels, *shape))
    assert out.shape == (2, 3, *shape) and torch.isfinite(out).all()
    m = 2 ** depth
    with pytest.raises(ValueError, match=f"multiples of {m}"):
        net(torch.rand(1, channels, shape[0] + 1, shape[1]))  # odd: never a multiple


@pytest.mark.parametrize("shape", [(37, 53), (9, 31), (67, 8), (101, 1)])
def test_odd_image_sizes_through_the_predictor(shape):
    """The predictor pads to the pooling grid; the probabilities come back at the image's size,
    and small tiles give the same probabilities as one window (tiles stay on the pooling grid,
    so the encoder's argmax positions do not depend on the tiling)."""
    net = _net(depth=2).eval()
    x = np.random.default_rng(3).random((1, *shape), dtype=np.float32)
    whole = predict_probs(net, x, tile_size=None)
    assert whole.shape == (3, *shape)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
    if shape[0] > 60:
        tiled = predict_probs(net, x, tile_size=64, overlap=16)
        assert np.abs(whole - tiled).max() < 1e-5


# --- gradients -------------------------------------------------------------------------
def test_gradients_reach_every_parameter_and_the_input():
    net = _net(depth=3).train()
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    target = (x.detach()[:, 0] > 0.5).long() + (x.detach()[:, 0] > 0.8).long()  # learnable from the pixel
    torch.nn.functional.cross_entropy(net(x), target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(x.grad.abs().sum()) > 0
    # a few optimizer steps on one batch lower the loss (the decoder learns through the unpooling)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x.detach()), target)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


# --- the indices are used --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["unpool", "nearest"])
def test_upsampled_values_sit_exactly_at_the_encoders_argmax(mode):
    """unpool: in every 2x2 cell the upsampled map is non-zero only at the position where the
    encoder feature of that level had its maximum. The same statistic for nearest upsampling
    (four equal copies per cell) is ~0 -- the check tells the two apart."""
    net = _net(mode, depth=2).eval()
    seen, hooks = _capture_upsampled(net)
    with torch.inference_mode():
        net(torch.rand(1, 1, 32, 48))
    for h in hooks:
        h.remove()
    skips, ups = seen["skip"], seen["up"]
    assert len(skips) == len(ups) == 2
    for skip, up in zip(reversed(skips), ups):  # decoder levels run deepest first
        if mode == "unpool":
            assert up.shape == skip.shape
            assert _share_at_argmax(skip, up) > 0.95  # the rest: cells whose max value is exactly 0
        else:
            assert _share_at_argmax(skip, up[:, : skip.shape[1]]) < 0.05


def test_moving_the_indices_changes_the_output():
    """Replace the encoder's indices by the top-left corner of every cell (a fixed
    bed of nails, as a nearest/zero-insertion upsampling would place them): the output changes."""
    net = _net(depth=2).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        ref = net(x)

    def top_left(module, args, out):
        pooled, idx = out
        w = args[0].shape[-1]
        r, c = torch.meshgrid(torch.arange(pooled.shape[-2]), torch.arange(pooled.shape[-1]), indexing="ij")
        return pooled, (2 * r * w + 2 * c).expand_as(idx).contiguous()

    h = net.pool.register_forward_hook(top_left)
    with torch.inference_mode():
        moved = net(x)
    h.remove()
    assert float((moved - ref).abs().max()) > 1e-3
    with torch.inference_mode():
        np.testing.assert_array_equal(net(x).numpy(), ref.numpy())  # hook removed: the same again


def test_traced_bed_of_nails_equals_maxunpool2d():
    """The TorchScript path (a scatter into zeros) is the same operation as nn.MaxUnpool2d."""
    skip = torch.randn(2, 3, 8, 12)
    pooled, idx = torch.nn.functional.max_pool2d(skip, 2, return_indices=True)
    x = torch.randn_like(pooled)
    unpool = torch.nn.MaxUnpool2d(2)
    eager = _unpool(unpool, x, idx, skip)
    traced = torch.jit.trace(lambda a, i, s: _unpool(unpool, a, i, s), (x, idx, skip))
    np.testing.assert_array_equal(traced(x, idx, skip).numpy(), eager.numpy())
    np.testing.assert_array_equal(eager.numpy(), unpool(x, idx).numpy())
    assert int((eager != 0).sum()) == x.numel()


# --- model folders and export ----------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    net = _net(depth=2).eval()
    folder = save_model(tmp_path / "bed-of-nails", net, net.config, thresholds={"seed": 0.4})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["unet"]["upsampling"] == "unpool" and read_config(folder)["unet"]["upsampling"] == "unpool"
    card = read_card(folder, "path")
    assert "unpool" in card.description
    loaded = load_model(folder, use_cache=False)
    assert loaded.config == net.config and loaded.model.pool.return_indices
    x = torch.rand(1, 1, 24, 36)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded.model(x).numpy(), net(x).numpy())
    img = np.random.default_rng(0).random((45, 70)).astype(np.float32)
    assert segment(img, card).labels.shape == (45, 70)
    # the weights do not fit another mode's architecture: a clear error, not a silent load
    from napari_cnnvision.core.registry import CorruptModel

    cfg["unet"]["upsampling"] = "bilinear"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptModel, match="do not fit"):
        load_model(folder, use_cache=False)


def test_bioimageio_export_of_an_unpool_model(tmp_path):
    """The bioimage.io export traces the network (TorchScript); the traced bed-of-nails decoder
    must agree with the network on another size (the export checks it) and pass the package's
    own test tensors."""
    pytest.importorskip("bioimageio.spec")
    from napari_cnnvision.backends.bioimageio.export import export_unet

    net = _net(depth=2).eval()
    folder = save_model(tmp_path / "bed-of-nails", net, net.config)
    img = (np.random.default_rng(1).random((64, 80)) * 1000).astype(np.float32)
    out = export_unet(read_card(folder, "path"), tmp_path / "pkg", img)
    assert (out / "rdf.yaml").is_file() and (out / "weights.pt").is_file()
    scripted = torch.jit.load(str(out / "weights.pt"))
    x = torch.rand(1, 1, 36, 52)
    with torch.inference_mode():
        assert float((scripted(x) - net(x)).abs().max()) < 1e-4
