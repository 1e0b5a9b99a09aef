"""ModuleCall: a module run on given tensors, bitwise what torch.func.functional_call gives."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from functrain.module_call import ModuleCall


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )


def tensors(model: torch.nn.Module, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(v.shape, generator=g) for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    return params, buffers


def test_same_outputs_and_buffer_updates_as_functional_call():
    """Outputs bitwise equal to functional_call's (the same tensors sit in the same slots);
    BatchNorm updates the given buffers in place alike; the module's own tensors return."""
    model = make_model().train()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    call = ModuleCall(model)
    x = torch.randn(5, 1, 8, 8)
    params, buffers = tensors(model)
    ref_buffers = {k: v.clone() for k, v in buffers.items()}
    for _ in range(3):  # the second and third calls take the resolved slots
        out = call(params, buffers, (x,), {})
        ref = functional_call(model, (params, ref_buffers), (x,))
        assert torch.equal(out, ref)
        for k in buffers:
            assert torch.equal(buffers[k], ref_buffers[k]), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())


def test_gradients_flow_to_the_given_tensors():
    model = make_model()
    params, buffers = tensors(model)
    leaves = {k: v.requires_grad_(True) for k, v in params.items()}
    ModuleCall(model)(leaves, buffers, (torch.randn(2, 1, 8, 8),), {}).sum().backward()
    assert all(v.grad is not None for v in leaves.values())
    assert all(p.grad is None for p in model.parameters())


def test_the_module_is_restored_when_forward_raises():
    model = make_model()
    own = dict(model.named_parameters())
    params, buffers = tensors(model)
    with pytest.raises(RuntimeError):
        ModuleCall(model)(params, buffers, (torch.randn(2, 3, 8, 8),), {})  # wrong channels
    for k, v in model.named_parameters():
        assert v is own[k], k


def test_tied_weights_are_untied_as_functional_call_does():
    """A tensor under two names: giving one name sets both (functional_call's tie_weights),
    which ModuleCall leaves to functional_call."""
    emb = torch.nn.Embedding(4, 3)
    head = torch.nn.Linear(3, 4, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head)
    assert list(dict(model.named_parameters())) == ["0.weight"]
    w = torch.randn(4, 3)
    x = torch.tensor([0, 2])
    out = ModuleCall(model)({"0.weight": w}, {}, (x,), {})
    assert torch.equal(out, functional_call(model, {"0.weight": w}, (x,)))
    assert torch.equal(out, w[x] @ w.T)


def test_frozen_parameters_given_as_buffers_and_unknown_names():
    """A parameter may come in the buffers dict (TrainState keeps frozen ones there); an
    unknown name is functional_call's business (strict=False: set for the call)."""
    model = make_model()
    params, buffers = tensors(model)
    buffers["0.weight"] = params.pop("0.weight")
    x = torch.randn(2, 1, 8, 8)
    call = ModuleCall(model)
    ref = functional_call(model, (params, {k: v.clone() for k, v in buffers.items()}), (x,))
    assert torch.equal(call(params, buffers, (x,), {}), ref)
    extra = dict(buffers, **{"4.scale": torch.ones(())})
    ref = functional_call(model, (params, {k: v.clone() for k, v in extra.items()}), (x,))
    assert torch.equal(call(params, extra, (x,), {}), ref)
    assert not hasattr(model[4], "scale")


def test_a_name_in_both_dicts_is_functional_calls_error():
    model = make_model()
    params, buffers = tensors(model)
    buffers["0.bias"] = params["0.bias"]
    with pytest.raises(ValueError, match="0.bias"):
        ModuleCall(model)(params, buffers, (torch.randn(2, 1, 8, 8),), {})


def test_parameters_added_after_the_first_call_are_found():
    model = torch.nn.Linear(2, 2)
    call = ModuleCall(model)
    w, b = torch.ones(2, 2), torch.zeros(2)
    x = torch.ones(1, 2)
    assert torch.equal(call({"weight": w, "bias": b}, {}, (x,), {}), torch.full((1, 2), 2.0))
    model.register_buffer("offset", torch.zeros(()))
    out = call({"weight": w, "bias": b}, {"offset": torch.ones(())}, (x,), {})
    assert torch.equal(out, torch.full((1, 2), 2.0))  # Linear ignores it; no error
    assert torch.equal(model.offset, torch.zeros(()))
