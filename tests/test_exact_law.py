"""Exact-law tests, no sampling noise: the law of the tokens emitted by verification rounds,
computed by enumeration in float64, equals the target's law to 1e-12 (docs/design.md §4,
level 1)."""

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd import SamplingParams, reference, testing
from ssd.reference import DraftProposer, MixedProposer, PointProposer, Proposal, Proposer
from ssd.sampling import chain_law

PREFIX = (0,)
small_vocab = st.integers(2, 6)


def guess(prefix, k):
    """A deterministic 'n-gram' guess that depends on the prefix."""
    return [(hash(prefix) + 3 * i) % 4 for i in range(k)]


@dataclasses.dataclass
class WeightedMixture:
    """A research-style proposer: with probability w use one proposer, else another. Its
    proposals in one round mix distribution rows and point-mass rows in one batch."""

    parts: list[tuple[float, Proposer]]

    def proposals(self, prefix, k):
        return [
            Proposal(d.tokens, w * d.prob, d.q)
            for w, part in self.parts
            for d in part.proposals(prefix, k)
        ]


@st.composite
def setups(draw, max_k=3):
    vocab = draw(small_vocab)
    target = draw(testing.table_models(vocab))
    draft = draw(testing.table_models(vocab))
    params = draw(testing.sampling_params(vocab))
    draft_params = draw(testing.sampling_params(vocab))
    k = draw(st.integers(1, max_k))
    return vocab, target, draft, params, draft_params, k


def point(vocab):
    return PointProposer(lambda s, k: [t % vocab for t in guess(s, k)])


@given(setups())
def test_one_round_with_draft_q_is_exact(setup):
    _vocab, target, draft, params, draft_params, k = setup
    got = reference.round_law(target, DraftProposer(draft, draft_params), PREFIX, params, k)
    # the first emitted token follows p; deeper tokens are checked by the chained tests
    first: dict = {}
    for seq, pr in got.items():
        first[seq[:1]] = first.get(seq[:1], 0.0) + pr
    testing.assert_laws_equal(first, reference.exact_law(target, PREFIX, 1, params))


@given(setups(), st.integers(2, 3))
def test_chained_rounds_with_draft_q_are_exact(setup, n):
    _vocab, target, draft, params, draft_params, k = setup
    want = reference.exact_law(target, PREFIX, n, params)
    got = reference.speculative_law(
        target, DraftProposer(draft, draft_params), PREFIX, n, params, k
    )
    testing.assert_laws_equal(got, want)


@given(setups(), st.integers(0, 6), st.sampled_from([0.05, 0.5, 1.0]))
def test_saguaro_q_prime_is_exact(setup, fanout, c):
    _vocab, target, draft, params, draft_params, k = setup
    proposer = DraftProposer(draft, draft_params, saguaro=(fanout, c))
    want = reference.exact_law(target, PREFIX, 3, params)
    testing.assert_laws_equal(
        reference.speculative_law(target, proposer, PREFIX, 3, params, k), want
    )


@given(setups())
def test_point_mass_proposals_are_exact(setup):
    vocab, target, _, params, _, k = setup
    want = reference.exact_law(target, PREFIX, 3, params)
    testing.assert_laws_equal(
        reference.speculative_law(target, point(vocab), PREFIX, 3, params, k), want
    )


@given(setups(), st.floats(0.1, 0.9))
def test_mixtures_of_proposal_kinds_are_exact(setup, w):
    vocab, target, draft, params, draft_params, k = setup
    neural = DraftProposer(draft, draft_params, saguaro=(2, 0.5))
    in_round = WeightedMixture([(w, neural), (1 - w, point(vocab))])
    by_prefix = MixedProposer(lambda s: neural if sum(s) % 2 else point(vocab))
    want = reference.exact_law(target, PREFIX, 3, params)
    for proposer in (in_round, by_prefix):
        testing.assert_laws_equal(
            reference.speculative_law(target, proposer, PREFIX, 3, params, k), want
        )


@settings(max_examples=30)
@given(setups(), st.data())
def test_a_row_law_does_not_depend_on_its_batch_companions(setup, data):
    vocab, target, draft, params, draft_params, k = setup
    props = DraftProposer(draft, draft_params).proposals(PREFIX, k)[:8]
    b = len(props)
    p = target.probs_many([PREFIX + d.tokens[:i] for d in props for i in range(k + 1)], params)
    p = p.reshape(b, k + 1, vocab)
    q = torch.stack([d.q for d in props])
    tokens = torch.tensor([d.tokens for d in props])
    point_rows = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    stop, nxt = chain_law(p, q, tokens, point_rows)
    for i in range(b):
        s1, n1 = chain_law(p[i : i + 1], q[i : i + 1], tokens[i : i + 1], point_rows[i : i + 1])
        assert torch.equal(stop[i], s1[0]) and torch.equal(nxt[i], n1[0])


def test_greedy_round_emits_the_argmax_chain():
    target = reference.TableModel(4, lambda s: [float((len(s) * 7 + i * 3) % 4) for i in range(4)])
    greedy = SamplingParams(temperature=0)
    want = reference.exact_law(target, PREFIX, 3, greedy)
    assert len(want) == 1 and next(iter(want.values())) == 1.0
    got = reference.speculative_law(target, point(4), PREFIX, 3, greedy, 2)
    testing.assert_laws_equal(got, want)
