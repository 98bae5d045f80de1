import pytest
import torch

from ssd import pytree as tree


@tree.pytree_dataclass
class State:
    pages: torch.Tensor
    lengths: torch.Tensor
    page_size: int = tree.static()


def make() -> State:
    return State(pages=torch.zeros(4, 3), lengths=torch.tensor([1, 2]), page_size=16)


def test_leaves_and_static_structure():
    s = make()
    leaves, spec = tree.tree_flatten(s)
    assert len(leaves) == 2
    back = tree.tree_unflatten([x + 1 for x in leaves], spec)
    assert isinstance(back, State) and back.page_size == 16
    assert torch.equal(back.lengths, torch.tensor([2, 3]))
    other = State(pages=torch.zeros(4, 3), lengths=torch.tensor([1, 2]), page_size=8)
    assert tree.tree_structure(other) != spec


def test_frozen_and_replace():
    s = make()
    with pytest.raises(AttributeError):
        s.page_size = 3  # type: ignore[misc]
    r = tree.replace(s, lengths=torch.tensor([5, 5]))
    assert r.lengths.tolist() == [5, 5] and s.lengths.tolist() == [1, 2]
    m = tree.tree_map(lambda x: x * 2, s)
    assert m.lengths.tolist() == [2, 4] and m.page_size == 16


def test_compiled_function_over_pytrees():
    def step(s: State) -> State:
        return tree.replace(s, lengths=s.lengths + 1)

    out = torch.compile(step, fullgraph=True)(make())
    assert isinstance(out, State) and out.lengths.tolist() == [2, 3]


def test_consumed_state_raises_and_names_the_step():
    @tree.donating("append_step")
    def append(s: State, x: torch.Tensor) -> tuple[State, torch.Tensor]:
        s.pages[0] += x  # in place, as KV writes are
        return tree.replace(s, lengths=s.lengths + 1), s.lengths.sum()

    s0 = make()
    s1, _ = append(s0, torch.ones(3))
    assert tree.version(s0) == 0 and tree.version(s1) == 1
    s2, _ = append(s1, torch.ones(3))
    assert tree.version(s2) == 2
    with pytest.raises(tree.StaleStateError, match="version 0 was consumed by append_step"):
        append(s0, torch.ones(3))
    with pytest.raises(tree.StaleStateError):
        tree.check_live(s1)
    tree.check_live(s2)


def test_a_step_that_donates_its_state_refuses_it_afterwards():
    from ssd.jit import Step

    def grow(state: State, n: int) -> tuple[State, int]:
        state.pages.add_(n)  # written in place, as KV pages are
        return tree.replace(state, lengths=state.lengths + n), n

    step = Step(grow, donate=0)
    s0 = State(torch.zeros(2), torch.zeros(1), page_size=4)
    s1, _ = step(s0, 1)
    with pytest.raises(tree.StaleStateError, match="consumed by grow"):
        step(s0, 1)
    s2, _ = step(s1, 2)
    assert tree.version(s2) == 2 and s2.pages.tolist() == [3.0, 3.0]
    undonated = Step(grow)
    undonated(s2, 1)
    undonated(s2, 1)  # without donate nothing is tracked
