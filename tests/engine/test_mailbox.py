"""The shared-memory mailbox between the target and its draft worker: what is sent is what is
received, in one part or many, and a wait for a peer that is gone or silent ends in `PeerGone`."""

from __future__ import annotations

import threading

import pytest
import torch

from ssd.engine.mailbox import Mailbox, PeerGone, Waiter


def _message(seed: int) -> tuple[dict, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randint(0, 151936, (3, 4), generator=g),
        torch.tensor([True, False, True]),
        torch.rand(3, 4, 37, generator=g),
        torch.rand(5, 3, generator=g).bfloat16(),
        torch.empty(0, 7),
    ]
    return {"hit": [True, False, None], "busy": 0.25, "seed": seed}, tensors


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1 << 20, 100])  # one part; many, each waiting to be taken
def test_messages_arrive_whole_and_in_order(capacity):
    box = Mailbox.allocate(capacity)
    writer, reader = Mailbox(box), Mailbox(box)
    wait = Waiter(spin_s=0.01, timeout_s=30)
    sent = [_message(s) for s in range(4)]

    def write() -> None:
        for obj, tensors in sent:
            writer.send(obj, tensors, wait)

    thread = threading.Thread(target=write)
    thread.start()
    got = [reader.recv(wait) for _ in sent]
    thread.join()
    for (obj, tensors), (obj2, tensors2) in zip(sent, got, strict=True):
        assert obj2 == obj
        assert len(tensors2) == len(tensors)
        for a, b in zip(tensors, tensors2, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.timeout(30)
def test_the_writer_waits_until_the_last_message_was_taken():
    box = Mailbox.allocate(1024)
    writer, reader = Mailbox(box), Mailbox(box)
    writer.send("first", [], Waiter(timeout_s=1))
    with pytest.raises(PeerGone, match=r"did not answer in 0\.2 s"):
        writer.send("second", [], Waiter(timeout_s=0.2))
    assert reader.recv(Waiter(timeout_s=1))[0] == "first"
    writer.send("second", [], Waiter(timeout_s=1))
    assert reader.recv(Waiter(timeout_s=1))[0] == "second"


@pytest.mark.timeout(30)
def test_a_wait_ends_when_the_peer_is_gone_or_silent():
    reader = Mailbox(Mailbox.allocate(1024))
    with pytest.raises(PeerGone, match="the draft process exited"):
        reader.recv(Waiter(0.01, None, lambda: False, "the draft process"))
    with pytest.raises(PeerGone, match=r"did not answer in 0\.3 s"):
        reader.recv(Waiter(0.01, 0.3, lambda: True))
    assert reader.published == reader.seen == 0  # nothing was read
