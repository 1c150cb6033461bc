"""token_nll against plain F.cross_entropy on full logits (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenweight.core.losses import DEFAULT_CHUNK_BYTES, cce_backend, default_chunk_size, token_nll
from tokenweight.infra.errors import TokenWeightError


def make_case(
    shape: tuple[int, ...] = (3, 11),
    hidden_size: int = 16,
    vocab: int = 50,
    *,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    ignored: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5 * 3
    b = torch.randn(vocab, generator=gen) if bias else None
    labels = torch.randint(0, vocab, shape, generator=gen)
    flat = labels.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[:ignored]] = -100
    upstream = torch.randn(shape, generator=gen)
    upstream.view(-1)[::4] = 0.0  # sparse weights: rows the backward may skip
    leaves = [t.to(dtype).requires_grad_() for t in (hidden, weight)]
    b = b.to(dtype).requires_grad_() if b is not None else None
    return leaves[0], leaves[1], b, labels, upstream


def reference(hidden, weight, bias, labels, softcap=None, scale=None):
    logits = F.linear(hidden, weight, bias)
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(
        logits.float().reshape(-1, weight.shape[0]), labels.reshape(-1), reduction="none"
    ).view(labels.shape)


def grads(out, upstream, leaves):
    leaves = [t for t in leaves if t is not None]
    return torch.autograd.grad((out * upstream).sum(), leaves)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, None, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_values_and_grads_match_cross_entropy(chunk_size, bias):
    hidden, weight, b, labels, up = make_case(bias=bias)
    out = token_nll(hidden, weight, labels, bias=b, chunk_size=chunk_size)
    ref = reference(hidden, weight, b, labels)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(out[labels == -100] == 0)
    for got, want in zip(grads(out, up, [hidden, weight, b]), grads(ref, up, [hidden, weight, b])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("softcap", "scale"), [(2.0, None), (None, 0.25), (1.5, 3.0)])
def test_softcap_and_scale(softcap, scale):
    hidden, weight, b, labels, up = make_case(seed=1)
    out = token_nll(hidden, weight, labels, bias=b, chunk_size=7, softcap=softcap, scale=scale)
    ref = reference(hidden, weight, b, labels, softcap=softcap, scale=scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(out, up, [hidden, weight, b]), grads(ref, up, [hidden, weight, b])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_bf16_close_to_cross_entropy_and_keeps_dtypes():
    hidden, weight, b, labels, up = make_case(
        shape=(40,), hidden_size=32, vocab=300, dtype=torch.bfloat16, seed=2
    )
    out = token_nll(hidden, weight, labels, bias=b, chunk_size=9)
    ref = reference(hidden, weight, b, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    got = grads(out, up, [hidden, weight, b])
    want = grads(ref, up, [hidden, weight, b])
    for g, w, leaf in zip(got, want, [hidden, weight, b]):
        assert g.dtype == leaf.dtype == torch.bfloat16
        assert _rel_err(g, w) < 2e-2


def test_single_token_and_unbatched_vector():
    hidden, weight, b, labels, _ = make_case(shape=(1,), ignored=0)
    out = token_nll(hidden, weight, labels, bias=b)
    torch.testing.assert_close(out, reference(hidden, weight, b, labels), rtol=1e-5, atol=1e-5)
    vec = token_nll(hidden[0], weight, labels[0], bias=b)
    assert vec.shape == () and torch.allclose(vec, out[0])


def test_all_ignored_and_empty():
    hidden, weight, b, labels, up = make_case(shape=(6,), ignored=6)
    out = token_nll(hidden, weight, labels, bias=b)
    assert torch.equal(out, torch.zeros(6))
    gh, gw, gb = grads(out, up, [hidden, weight, b])
    assert not gh.any() and not gw.any() and not gb.any()
    empty = token_nll(hidden[:0], weight, labels[:0], bias=b)
    assert empty.shape == (0,)
    gh, gw, _ = grads(empty, up[:0], [hidden, weight, b])
    assert not gw.any()


def test_zero_upstream_gradient_gives_zero_grads():
    hidden, weight, b, labels, _ = make_case()
    out = token_nll(hidden, weight, labels, bias=b, chunk_size=4)
    gh, gw, gb = grads(out, torch.zeros(labels.shape), [hidden, weight, b])
    assert not gh.any() and not gw.any() and not gb.any()


def test_gradcheck_float64():
    hidden, weight, b, labels, _ = make_case(shape=(7,), hidden_size=4, vocab=6, ignored=2)
    hidden, weight, b = (t.detach().double().requires_grad_() for t in (hidden, weight, b))

    def fn(h, w, bias):
        return token_nll(h, w, labels, bias=bias, chunk_size=3, softcap=2.0, scale=0.7)

    assert fn(hidden, weight, b).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (hidden, weight, b), eps=1e-6, atol=1e-5)


def test_no_grad_matches_and_builds_no_graph():
    hidden, weight, b, labels, _ = make_case()
    with_grad = token_nll(hidden, weight, labels, bias=b, chunk_size=6)
    with torch.no_grad():
        without = token_nll(hidden, weight, labels, bias=b, chunk_size=6)
    assert without.grad_fn is None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_forward_saves_no_logits():
    hidden, weight, b, labels, _ = make_case(shape=(64,), hidden_size=8, vocab=40)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_nll(hidden, weight, labels, bias=b, chunk_size=16)
    allowed = {hidden.numel(), weight.numel(), b.numel(), labels.numel()}
    assert saved and all(t.numel() in allowed for t in saved), [t.shape for t in saved]
    assert all(t.dim() < 2 or t.shape[-1] != 40 or t.numel() == weight.numel() for t in saved)


def test_autocast_casts_like_linear():
    hidden, weight, b, labels, up = make_case(shape=(20,), hidden_size=16, vocab=64, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_nll(hidden, weight, labels, bias=b, chunk_size=8)
    low = [t.detach().bfloat16() for t in (hidden, weight, b)]
    torch.testing.assert_close(out, reference(*low, labels), rtol=0, atol=1e-3)
    gh, gw, gb = grads(out, up, [hidden, weight, b])
    assert gh.dtype == gw.dtype == gb.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference(hidden, weight, b, labels)
    for g, w in zip((gh, gw, gb), grads(ref, up, [hidden, weight, b])):
        assert _rel_err(g, w) < 2e-2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, w, b, lab: (h, w, b, lab.clone().fill_(50)), "label 50"),
        (lambda h, w, b, lab: (h, w, b, lab.clone().fill_(-3)), "label -3"),
        (lambda h, w, b, lab: (h, w, b, lab[:, :-1]), "labels shape"),
        (lambda h, w, b, lab: (h, w[:, :-1], b, lab), "weight must have shape"),
        (lambda h, w, b, lab: (h, w.double(), b, lab), "torch.float64"),
        (lambda h, w, b, lab: (h, w, b[:-1], lab), "bias must have shape"),
        (lambda h, w, b, lab: (h, w, b, lab.float()), "integer tensor"),
        (lambda h, w, b, lab: (h.to("meta"), w, b, lab), "one device"),
    ],
)
def test_bad_inputs_raise(change, message):
    hidden, weight, b, labels, _ = make_case()
    args = change(hidden, weight, b, labels)
    with pytest.raises(TokenWeightError, match=message):
        token_nll(args[0], args[1], args[3], bias=args[2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": 2.5},
        {"softcap": 0.0},
        {"scale": float("nan")},
        {"backend": "triton"},
    ],
)
def test_bad_options_raise(kwargs):
    hidden, weight, b, labels, _ = make_case()
    with pytest.raises(TokenWeightError):
        token_nll(hidden, weight, labels, bias=b, **kwargs)


def test_auto_backend_on_cpu_is_chunked(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("cut-cross-entropy must not be used on CPU")

    monkeypatch.setattr(cce_backend, "available", lambda: True)
    monkeypatch.setattr(cce_backend, "linear_nll", must_not_run)
    hidden, weight, b, labels, _ = make_case()
    out = token_nll(hidden, weight, labels, bias=b, backend="auto")
    torch.testing.assert_close(out, reference(hidden, weight, b, labels), rtol=1e-5, atol=1e-5)
    with pytest.raises(TokenWeightError, match="CUDA"):
        token_nll(hidden, weight, labels, bias=b, backend="cce")


@pytest.mark.parametrize("vocab", [7, 1000, 49152, 128256, 10**7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("device", "budget"), [("cpu", DEFAULT_CHUNK_BYTES), ("cuda", 2**30)])
def test_default_chunk_size_fits_budget(vocab, dtype, device, budget):
    rows = default_chunk_size(vocab, dtype, device=device)
    assert rows >= 16 and rows % 16 == 0
    per_row = vocab * (4 + (dtype.itemsize if dtype != torch.float32 else 0))
    assert rows == 16 or rows * per_row <= budget
    assert rows == 16 or (rows + 16) * per_row > budget


def test_cce_check_accepts_agreeing_and_rejects_others(monkeypatch):
    from tokenweight.core.losses.chunked import _ChunkedTokenNLL

    def agreeing(hidden, weight, labels, bias, ignore_index, softcap):
        return _ChunkedTokenNLL.apply(hidden, weight, bias, labels, ignore_index, 33, softcap, 1.0)

    def off_by_one_percent(*args):
        return agreeing(*args) * 1.01

    def broken(*args):
        raise RuntimeError("kernel failed")

    cpu = torch.device("cpu")
    monkeypatch.setattr(cce_backend, "linear_nll", agreeing)
    assert cce_backend._agrees(cpu, torch.float32, True, 2.0)
    for impl in (off_by_one_percent, broken):
        monkeypatch.setattr(cce_backend, "linear_nll", impl)
        with pytest.warns(UserWarning, match="cut-cross-entropy"):
            assert not cce_backend._agrees(cpu, torch.float32, False, None)


def test_frozen_weight_gets_no_gradient_but_hidden_does():
    hidden, weight, b, labels, up = make_case()
    frozen = weight.detach()
    out = token_nll(hidden, frozen, labels, bias=b.detach(), chunk_size=4)
    (gh,) = grads(out, up, [hidden])
    (want,) = grads(reference(hidden, frozen, b.detach(), labels), up, [hidden])
    torch.testing.assert_close(gh, want, rtol=1e-5, atol=1e-5)
