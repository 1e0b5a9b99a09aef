"""Tree helpers: flattening with dotted paths, grouping, global norm, tree_map over states."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

import functrain as ft
from functrain.tree import TreeInfo, flatten, flatten_like, global_norm, leaf_paths


def test_paths_are_dotted_for_nested_and_named_parameters():
    model = torch.nn.Sequential(
        OrderedDict(conv=torch.nn.Conv2d(1, 2, 3), head=torch.nn.Linear(2, 1))
    )
    leaves, info = flatten(dict(model.named_parameters()))
    assert set(info.paths) == {"conv.weight", "conv.bias", "head.weight", "head.bias"}
    _, info = flatten({"backbone": {"layers": [torch.ones(1), torch.ones(2)]}, "b": torch.ones(())})
    assert info.paths == ("b", "backbone.layers.0", "backbone.layers.1")


def test_non_tensor_leaf_is_rejected_with_its_path():
    with pytest.raises(ValueError, match=r"'head\.scale' is a float"):
        flatten({"head": {"scale": 0.5, "w": torch.ones(2)}})


def test_groups_split_and_merge_by_device_and_dtype():
    tree = {"a": torch.ones(2), "b": torch.ones(2, dtype=torch.float64), "c": torch.zeros(3)}
    leaves, info = flatten(tree)
    assert info.groups == ((0, 2), (1,))
    doubled = info.foreach(lambda xs: [x * 2 for x in xs], leaves)
    assert [d.dtype for d in doubled] == [torch.float32, torch.float64, torch.float32]
    assert torch.equal(doubled[1], torch.full((2,), 2.0, dtype=torch.float64))
    assert info.merge(info.split(leaves)) == leaves


def test_flatten_like_names_the_missing_leaf():
    _, info = flatten({"w": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(ValueError, match="missing leaf 'w'"):
        flatten_like({"b": torch.ones(1)}, info)
    with pytest.raises(ValueError, match="unexpected leaf 'x'"):
        flatten_like({"w": torch.ones(1), "b": torch.ones(1), "x": torch.ones(1)}, info)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 2.5, math.inf])
def test_global_norm_is_bitwise_torch_including_mixed_dtypes(norm_type):
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(3, 4, generator=gen),
        torch.randn(5, generator=gen, dtype=torch.float64),
        torch.randn((), generator=gen),
        torch.randn(2, 2, 2, generator=gen),
    ]
    expected = torch.nn.utils.get_total_norm(tensors, norm_type, foreach=True)
    assert torch.equal(global_norm(tensors, norm_type), expected)


def test_tree_map_sees_through_optimizer_state():
    params = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    tx = ft.chain(ft.clip(1.0), ft.adamw(lr=0.1))
    state = tx.init(params)
    doubled = ft.tree_map(lambda t: t.to(torch.float64), state)
    assert type(doubled) is type(state)
    adam_state = doubled[1][0][0]
    assert adam_state.mu[0].dtype == torch.float64
    assert adam_state.paths == ("b", "w")


def test_leaf_paths_are_cached_per_structure():
    _, info = flatten({"a": torch.ones(1)})
    assert leaf_paths(info.treespec) is info.paths
    assert isinstance(info, TreeInfo)
