import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxopt_ft import tree

PARAMS = {
    "conv1": {"kernel": jnp.ones((3, 1, 4)), "bias": jnp.zeros((4,))},
    "head": {"kernel": jnp.ones((8, 2)), "bias": jnp.zeros((2,))},
}


def test_paths_in_leaf_order():
    assert tree.paths(PARAMS) == ["conv1/bias", "conv1/kernel", "head/bias", "head/kernel"]


def test_label_tree_first_match_wins():
    labels = tree.label_tree(PARAMS, [("head/.*", "train"), (".*kernel", "freeze"), (".*", "x")])
    assert labels == {
        "conv1": {"kernel": "freeze", "bias": "x"},
        "head": {"kernel": "train", "bias": "train"},
    }


def test_uncovered_leaf_is_an_error():
    with pytest.raises(ValueError, match=r"covered by no rule: \['conv1/bias', 'head/bias'\]"):
        tree.label_tree(PARAMS, [(".*kernel", 1)])


def test_unused_rule_is_an_error():
    with pytest.raises(ValueError, match="matching no parameter: \\['dense/.*'\\]"):
        tree.label_tree(PARAMS, [("dense/.*", 1), (".*", 0)])


def test_default_and_allow_unused():
    out = tree.match_rules(
        PARAMS, [("nothing", 1), ("head/kernel", 2)], default=0, allow_unused=True
    )
    assert out == {"conv1/bias": 0, "conv1/kernel": 0, "head/bias": 0, "head/kernel": 2}


def test_bad_rules():
    with pytest.raises(TypeError, match="pairs"):
        tree.label_tree(PARAMS, "head")
    with pytest.raises(ValueError, match="invalid regex"):
        tree.label_tree(PARAMS, [("(", 1)])


def test_counts_and_bytes():
    assert tree.count_params(PARAMS) == 12 + 4 + 16 + 2
    assert tree.count_nonzero(PARAMS) == 12 + 16
    assert tree.tree_bytes(PARAMS) == 4 * 34
    assert tree.tree_bytes({"q": np.zeros(10, np.int8)}) == 10


def test_nnx_state_paths_and_rules():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Linear(3, 4, rngs=rngs)
            self.head = nnx.Linear(4, 2, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    ps = tree.paths(state)
    assert "conv1/kernel" in ps[0] or any(p.startswith("conv1/kernel") for p in ps)
    labels = tree.label_tree(state, [("head/.*", "train"), (".*", "freeze")])
    flat = tree.flatten(labels)
    assert {p: v for p, v in flat.items() if p.startswith("head")} and all(
        v == ("train" if p.startswith("head") else "freeze") for p, v in flat.items()
    )
    assert tree.count_params(state) == 3 * 4 + 4 + 4 * 2 + 2


def test_map_with_path():
    out = tree.map_with_path(lambda p, x: p, PARAMS)
    assert out["head"]["kernel"] == "head/kernel"


def test_unflatten_inverts_flatten():
    flat = tree.flatten(PARAMS)
    nested = tree.unflatten(flat)
    assert tree.flatten(nested) == flat
    assert nested["conv1"]["kernel"] is PARAMS["conv1"]["kernel"]


def test_unflatten_keeps_order_and_nests_deeply():
    nested = tree.unflatten({"b/y/z": 1, "a": 2, "b/x": 3})
    assert nested == {"b": {"y": {"z": 1}, "x": 3}, "a": 2}
    assert list(nested) == ["b", "a"] and list(nested["b"]) == ["y", "x"]


@pytest.mark.parametrize("flat", [{"a": 1, "a/b": 2}, {"a/b/c": 1, "a/b": 2}])
def test_unflatten_rejects_a_leaf_that_is_also_a_parent(flat):
    with pytest.raises(ValueError, match=r"'a(/b)?' is a leaf and also the parent of 'a/b"):
        tree.unflatten(flat)


def test_flatten_is_leaf_keeps_nodes_whole():
    nodes = {"w": (1, 2), "b": 3}
    assert tree.flatten(nodes) == {"b": 3, "w/0": 1, "w/1": 2}
    assert tree.flatten(nodes, is_leaf=lambda x: isinstance(x, tuple)) == {"b": 3, "w": (1, 2)}
