"""Channel adaptation of a first convolution (backends/channels.py): a 1-channel base model on RGB
images starts as the base model on the inverted luminance; an RGB base on grey images as the base
on the grey image repeated in its channels."""
import numpy as np
import pytest

from napari_cnnvision.backends.channels import (LUMINANCE, adapt_kernel, adapt_state, default_method,
                                                inverted_luminance)
from napari_cnnvision.core.axes import InputError


def _conv_valid(x, k, b):
    """A 'valid' 2D convolution (correlation) of x (H, W, C) with a Keras kernel (kh, kw, C, F)."""
    kh, kw = k.shape[:2]
    h, w = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.zeros((h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.tensordot(x[i:i + h, j:j + w], k[i, j], axes=([2], [0]))
    return out + b


def test_one_to_three_channels_computes_the_base_layer_on_the_inverted_luminance():
    rng = np.random.default_rng(0)
    k, b = rng.normal(size=(3, 3, 1, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    a = adapt_kernel(k, 3, in_axis=2, out_axis=3)
    assert a.method == "inverted_luminance" and a.kernel.shape == (3, 3, 3, 5) and a.kernel.dtype == np.float32
    x = rng.random((12, 10, 3))
    inv = 1 - x @ np.asarray(LUMINANCE)
    np.testing.assert_allclose(_conv_valid(x, a.kernel, b + a.bias_shift), _conv_valid(inv[..., None], k, b),
                               rtol=1e-5, atol=1e-5)
    rec = a.record("conv1")
    assert rec["from_channels"] == 1 and rec["to_channels"] == 3 and rec["layer"] == "conv1"


def test_three_to_one_channel_sums_the_kernel_and_mean_spreads_it():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(3, 3, 3, 4))
    a = adapt_kernel(k, 1, in_axis=2, out_axis=3)
    assert a.method == "sum" and a.kernel.shape == (3, 3, 1, 4) and not a.bias_shift.any()
    g = rng.random((9, 9))
    np.testing.assert_allclose(_conv_valid(g[..., None], a.kernel, 0), _conv_valid(np.stack([g] * 3, -1), k, 0))
    m = adapt_kernel(k[:, :, :1], 2, in_axis=2, out_axis=3)  # 1 -> 2: the channels' mean
    assert m.method == "mean" == default_method(1, 2)
    np.testing.assert_allclose(_conv_valid(np.stack([g] * 2, -1), m.kernel, 0), _conv_valid(g[..., None], k[:, :, :1], 0))


def test_unsupported_adaptations_are_clear_errors():
    with pytest.raises(InputError, match="only 1 -> n and n -> 1"):
        adapt_kernel(np.zeros((3, 3, 2, 4)), 3, in_axis=2, out_axis=3)
    with pytest.raises(InputError, match="3 \\(RGB\\) channels"):
        adapt_kernel(np.zeros((3, 3, 1, 4)), 2, in_axis=2, out_axis=3, method="inverted_luminance")
    with pytest.raises(InputError, match="RGB image"):
        inverted_luminance(np.zeros((8, 8)))


def test_inverted_luminance_of_an_8bit_rgb_image():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = 255
    img[1, 1] = (255, 0, 0)
    out = inverted_luminance(img)
    assert out.dtype == np.float32 and out[0, 0] == pytest.approx(0, abs=1e-3) and out[0, 1] == 255
    assert out[1, 1] == pytest.approx(255 * (1 - LUMINANCE[0]), rel=1e-5)


def test_unet_with_batch_norm_adapted_to_rgb_matches_the_base_on_inverted_luminance():
    """The torch path of train_unet: the shift goes into the batch norm's running mean (eval mode)."""
    torch = pytest.importorskip("torch")
    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet

    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=1, depth=2, base_filters=4, batch_norm=True)
    base = build_unet(cfg).eval()
    with torch.no_grad():  # non-trivial running statistics
        base.down[0][1].running_mean.uniform_(-0.5, 0.5)
        base.down[0][1].running_var.uniform_(0.5, 2.0)
    state, rec = adapt_state({k: v.numpy() for k, v in base.state_dict().items()}, 3, "down.0.0.weight",
                             "down.0.0.bias", "down.0.1.running_mean")
    assert rec["method"] == "inverted_luminance" and rec["layer"] == "down.0.0"
    new = build_unet(UNetConfig(in_channels=3, depth=2, base_filters=4, batch_norm=True)).eval()
    new.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    x = torch.rand(1, 3, 48, 48)
    inv = 1 - (x * torch.tensor(LUMINANCE).view(1, 3, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        a, b, c = new.down[0](x), base.down[0](inv), base.down[0](1 - inv)  # the first block (conv-BN-ReLU x 2)
        whole_a, whole_b = new(x), base(inv)
    # zero padding meets the constant 1 at the edge: compare inside the two 3x3 convolutions' reach
    assert torch.allclose(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2], atol=1e-5)
    assert float(b[..., 2:-2, 2:-2].std()) > 1e-3  # a real, image-dependent output
    assert not torch.allclose(a[..., 2:-2, 2:-2], c[..., 2:-2, 2:-2], atol=1e-4)  # the inversion is what matches
    assert torch.allclose(whole_a[..., 16:-16, 16:-16], whole_b[..., 16:-16, 16:-16], atol=1e-4)
