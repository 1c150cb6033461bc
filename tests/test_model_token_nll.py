"""model_token_nll against each model's own full logits + F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokenweight.core.losses import FAMILIES, head_transform, model_token_nll, select_head
from tokenweight.infra.errors import TokenWeightError

# make every family's output transform non-trivial at tiny-model logit sizes
TRANSFORMS = {
    "gemma2": {"final_logit_softcapping": 2.0},
    "gemma3_text": {"final_logit_softcapping": 2.0},
    "cohere": {"logit_scale": 0.5},
    "granite": {"logits_scaling": 4.0},
}


def ids_for(model, batch=2, length=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=gen)


def reference_nll(model, input_ids, labels=None, attention_mask=None):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = (input_ids if labels is None else labels)[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)


def param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_grads_close(got, want, tol=1e-5):
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
            continue
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_own_logits_for_each_family(family, tiny_causal_lm):
    model = tiny_causal_lm(family, **TRANSFORMS.get(family, {}))
    ids = ids_for(model)
    weights = torch.rand(ids.shape[0], ids.shape[1] - 1, generator=torch.Generator().manual_seed(1))
    nll = model_token_nll(model, ids, chunk_size=7)
    ref = reference_nll(model, ids)
    assert nll.shape == (2, 12) and nll.dtype == torch.float32
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(
        param_grads(model, (weights * nll).sum()), param_grads(model, (weights * ref).sum())
    )


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite"])
def test_module_head_equals_fused(family, tiny_causal_lm):
    model = tiny_causal_lm(family, **TRANSFORMS.get(family, {}))
    ids = ids_for(model, seed=2)
    weights = torch.rand(2, 12, generator=torch.Generator().manual_seed(3))
    fused = model_token_nll(model, ids, head="fused", chunk_size=5)
    module = model_token_nll(model, ids, head="module", chunk_size=5)
    torch.testing.assert_close(module, fused, rtol=1e-5, atol=1e-5)
    assert_grads_close(
        param_grads(model, (weights * module).sum()), param_grads(model, (weights * fused).sum())
    )


def test_tied_embeddings(tiny_llama):
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = ids_for(model)
    nll = model_token_nll(model, ids)
    ref = reference_nll(model, ids)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(param_grads(model, nll.sum()), param_grads(model, ref.sum()))


def test_training_mode_with_gradient_checkpointing(tiny_llama):
    model = tiny_llama().train()
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()
    ids = ids_for(model, seed=4)
    nll = model_token_nll(model, ids)
    ref = reference_nll(model, ids)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(param_grads(model, nll.sum()), param_grads(model, ref.sum()))


def test_mask_and_labels_become_ignored_targets(tiny_llama):
    model = tiny_llama()
    ids = ids_for(model, length=10)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    labels = ids.clone()
    labels[0, 4] = -100
    nll = model_token_nll(model, ids, labels=labels, attention_mask=mask)
    ref = reference_nll(model, ids, labels=labels, attention_mask=mask)
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    assert torch.all(nll[1, 6:] == 0) and nll[0, 3] == 0 and torch.all(nll[0, 4:] > 0)


def test_lm_head_never_sees_the_sequence(tiny_llama):
    model = tiny_llama()
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        model_token_nll(model, ids_for(model))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 0, 32])]


def test_no_grad_scoring(tiny_llama):
    model = tiny_llama()
    ids = ids_for(model)
    with torch.no_grad():
        nll = model_token_nll(model, ids)
        ref = reference_nll(model, ids)
    assert nll.grad_fn is None
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


def test_single_token_sequence(tiny_llama):
    model = tiny_llama()
    assert model_token_nll(model, ids_for(model, length=1)).shape == (2, 0)


def test_autocast_bf16_close_to_own_logits(tiny_llama):
    model = tiny_llama()
    ids = ids_for(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = model_token_nll(model, ids)
        ref = reference_nll(model, ids)
    torch.testing.assert_close(nll, ref, rtol=2e-2, atol=2e-2)


class CountingWrapper(nn.Module):
    """Stands in for DDP / DeepSpeed: holds the model as ``.module`` and counts forwards."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **kwargs):
        self.calls += 1
        return self.module(**kwargs)


class PeftLike(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base_model = CountingWrapper(base)

    def get_base_model(self):
        return self.base_model.module

    def forward(self, **kwargs):
        return self.base_model(**kwargs)


def test_wrapped_model_is_called_through_its_wrapper(tiny_llama):
    model = tiny_llama()
    ids = ids_for(model)
    outer = CountingWrapper(PeftLike(model))
    nll = model_token_nll(outer, ids)
    assert outer.calls == 1 and outer.module.base_model.calls == 1
    torch.testing.assert_close(nll, reference_nll(model, ids), rtol=1e-5, atol=1e-5)


def test_ddp_single_process(tiny_llama, tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = tiny_llama()
        ddp = nn.parallel.DistributedDataParallel(model)
        ids = ids_for(model)
        nll = model_token_nll(ddp, ids)
        nll.sum().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        reference_nll(model, ids).sum().backward()
        for g, p in zip(got, model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_head_selection(tiny_llama):
    model = tiny_llama()
    assert select_head(model.lm_head, model) == "fused"
    model.lm_head.weight.ds_id = 7  # what a DeepSpeed ZeRO-3 parameter carries
    try:
        assert select_head(model.lm_head, model) == "module"
        with pytest.raises(TokenWeightError, match="ZeRO-3"):
            select_head(model.lm_head, model, "fused")
    finally:
        del model.lm_head.weight.ds_id

    class LoraLikeHead(nn.Linear):
        pass

    head = LoraLikeHead(32, 96, bias=False)
    assert select_head(head, model) == "module"
    with pytest.raises(TokenWeightError, match="head must be"):
        select_head(model.lm_head, model, "fast")


def test_head_transform_table(tiny_causal_lm):
    assert head_transform(tiny_causal_lm("llama").config).softcap is None
    gemma2 = head_transform(tiny_causal_lm("gemma2", final_logit_softcapping=30.0).config)
    assert gemma2.softcap == 30.0 and gemma2.scale is None
    assert head_transform(tiny_causal_lm("cohere", logit_scale=0.0625).config).scale == 0.0625
    assert head_transform(tiny_causal_lm("granite", logits_scaling=8.0).config).scale == 0.125


def test_unknown_family(tiny_llama):
    model = tiny_llama()
    model.config.model_type = "mystery"
    ids = ids_for(model)
    torch.testing.assert_close(
        model_token_nll(model, ids), reference_nll(model, ids), rtol=1e-5, atol=1e-5
    )
    model.config.final_logit_scale = 2.0
    with pytest.raises(TokenWeightError, match=r"'mystery'.*final_logit_scale"):
        model_token_nll(model, ids)


def test_model_without_logits_to_keep_is_refused(tiny_llama):
    from transformers import LlamaForCausalLM

    class FullLogitsOnly(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask)

    model = FullLogitsOnly(tiny_llama().config).eval()
    with pytest.raises(TokenWeightError, match="logits_to_keep"):
        model_token_nll(model, ids_for(model))


def test_bad_inputs(tiny_llama):
    model = tiny_llama()
    ids = ids_for(model)
    with pytest.raises(TokenWeightError, match="batch, seq"):
        model_token_nll(model, ids[0])
    with pytest.raises(TokenWeightError, match="labels must have the shape"):
        model_token_nll(model, ids, labels=ids[:, 1:])
    bad = ids.clone()
    bad[1, 5] = 500
    with pytest.raises(TokenWeightError, match="label 500"):
        model_token_nll(model, ids, labels=bad)
    with pytest.raises(TokenWeightError, match="logits_to_keep"):
        model_token_nll(model, ids, logits_to_keep=1)
    with pytest.raises(TokenWeightError, match="expected a Hugging Face causal LM"):
        model_token_nll(nn.Linear(3, 3), ids)
