import math

import pytest
import torch

from ddpm_utils.embeddings import TimeEmbedding, sinusoidal_embedding


def test_reference_values():
    # Computed by hand with math.sin/math.cos: dim = 4, half = 2, frequencies w = (1, 10000 ** -0.5 = 0.01).
    emb = sinusoidal_embedding(torch.tensor([0, 1, 100]), 4)
    expected = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],
        [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],  # 0.84147, 0.0099998, 0.54030, 0.99995
        [math.sin(100), math.sin(1), math.cos(100), math.cos(1)],
    ])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("dim, max_period", [(8, 10000), (32, 10000), (6, 100)])
def test_formula_value_by_value(dim, max_period):
    t = torch.tensor([0, 3, 17, 999])
    emb = sinusoidal_embedding(t, dim, max_period)
    half = dim // 2
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            w = max_period ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.sin(tb * w), abs=2e-4)
            assert emb[b, half + i].item() == pytest.approx(math.cos(tb * w), abs=2e-4)


def test_odd_dim_pads_a_zero_column_and_shapes():
    emb = sinusoidal_embedding(torch.arange(5), 7)
    assert emb.shape == (5, 7) and (emb[:, -1] == 0).all()
    torch.testing.assert_close(emb[:, :6], sinusoidal_embedding(torch.arange(5), 6))


def test_offset_is_a_rotation():
    """emb(t + k) is emb(t) rotated by angle k * w_i in each (sin, cos) pair (Vaswani et al. 2017, Sec. 3.5)."""
    dim, k = 16, 7
    t = torch.arange(0, 500, 37)
    a, b = sinusoidal_embedding(t, dim).double(), sinusoidal_embedding(t + k, dim).double()
    half = dim // 2
    angle = k * 10000 ** (-torch.arange(half, dtype=torch.float64) / half)
    sin, cos = a[:, :half], a[:, half:]
    torch.testing.assert_close(b[:, :half], sin * angle.cos() + cos * angle.sin(), atol=1e-4, rtol=0)
    torch.testing.assert_close(b[:, half:], cos * angle.cos() - sin * angle.sin(), atol=1e-4, rtol=0)


def test_time_embedding_mlp():
    m = TimeEmbedding(16, 64)
    out = m(torch.tensor([0, 10, 999]))
    assert out.shape == (3, 64)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("t, dim, match", [
    (torch.zeros(2, 1), 8, "t must be a 1-D tensor"),
    (torch.zeros(2), 1, "dim must be an int >= 2"),
])
def test_bad_inputs(t, dim, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_embedding(t, dim)
