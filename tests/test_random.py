import pytest
import torch

from ssd import random as rnd


@pytest.mark.parametrize(
    ("key", "counter", "expected"),
    [  # Random123 known-answer vectors for threefry2x32_20
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ],
)
def test_threefry_known_answers(key, counter, expected):
    y = rnd.threefry2x32(torch.tensor(key), torch.tensor(counter[0]), torch.tensor(counter[1]))
    assert (int(y[0]), int(y[1])) == expected


def test_key_encodes_the_whole_seed():
    assert rnd.key(2**40 + 7).tolist() == [256, 7]
    with pytest.raises(ValueError, match="seed"):
        rnd.key(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_is_open_interval_with_uniform_moments(dtype):
    u = rnd.uniform(rnd.key(3), (1_000_000,), dtype)
    assert u.dtype == dtype
    assert u.min() > 0 and u.max() < 1
    # mean 1/2 and variance 1/12; 6 standard errors
    assert abs(u.mean().item() - 0.5) < 6 * (1 / 12) ** 0.5 / 1000
    assert abs(u.var().item() - 1 / 12) < 6 * (1 / 180) ** 0.5 / 1000
    counts = torch.histc(u.double(), bins=10, min=0, max=1)
    assert ((counts - 1e5).abs() < 6 * (1e5 * 0.9) ** 0.5).all()


def test_exponential_and_gumbel_are_finite_and_have_the_right_mean():
    e = rnd.exponential(rnd.key(4), (1_000_000,))
    g = rnd.gumbel(rnd.key(4), (1_000_000,))
    assert (e > 0).all() and torch.isfinite(e).all() and torch.isfinite(g).all()
    assert abs(e.mean().item() - 1) < 0.006
    assert abs(g.mean().item() - 0.5772156649) < 0.008


def test_split_and_fold_in_give_distinct_independent_keys():
    k = rnd.key(0)
    ks = rnd.split(k, 1000)
    assert ks.shape == (1000, 2)
    folded = rnd.fold_in(k, torch.arange(1000))
    words = {tuple(x) for x in torch.cat([ks, folded]).tolist()}
    assert len(words) == 2000
    # neighbouring keys give uncorrelated streams
    a, b = rnd.uniform(ks[0], (100_000,)), rnd.uniform(ks[1], (100_000,))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02


def test_batched_keys_equal_single_keys():
    keys = rnd.split(rnd.key(9), 5)
    batched = rnd.uniform(keys, (7, 3))
    assert batched.shape == (5, 7, 3)
    for i in range(5):
        assert torch.equal(batched[i], rnd.uniform(keys[i], (7, 3)))
        assert torch.equal(rnd.fold_in(keys, 11)[i], rnd.fold_in(keys[i], 11))
        assert torch.equal(rnd.split(keys, 3)[i], rnd.split(keys[i], 3))


def test_same_key_same_numbers_and_compiled_equals_eager():
    def f(k):
        k1, k2 = rnd.split(k, 2).unbind(-2)
        return rnd.uniform(rnd.fold_in(k1, 5), (64,)), rnd.bits(k2, (8, 8))[1]

    k = rnd.split(rnd.key(1), 4)
    eager = f(k)
    compiled = torch.compile(f, fullgraph=True)(k)
    for a, b, c in zip(eager, f(k), compiled, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_bad_key_is_rejected():
    with pytest.raises(ValueError, match="key"):
        rnd.uniform(torch.tensor([1, 2, 3]), (2,))
