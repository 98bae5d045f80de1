"""Prefix caching: KV pages of prompts shared between requests by their content.

Page i of a prompt holds the keys and values of tokens [i * P, (i + 1) * P), which depend only
on those tokens and the ones before them; so a full page is named by a hash chain over the
prompt up to its end, and a later prompt that starts with the same tokens reuses the page
instead of recomputing it. Pages are reference counted. A request only ever writes past its
cached prefix (prefill starts at the first page it does not share, and every later write is
at a later position), so shared pages are never written and need no copy on write; rejected
speculative tokens are rolled back by overwriting, in the request's own pages.

When no request holds a cached page, the page stays cached (an idle page) until the free list
runs dry; then idle pages are reused, least recently released first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from ssd.kv import PageAllocator


class PrefixCache:
    """A page allocator whose full prompt pages are shared by content (see the module doc);
    with `enabled=False`, a plain one."""

    def __init__(self, num_pages: int, page_size: int, enabled: bool = True):
        self.page_size, self.enabled = page_size, enabled
        self._alloc = PageAllocator(num_pages, page_size)
        self._by_hash: dict[bytes, int] = {}  # hash chain of a prompt prefix -> its last page
        self._hash: dict[int, bytes] = {}  # page -> its hash chain, for cached pages
        self._refs: dict[int, int] = {}  # page -> requests holding it
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached pages nobody holds, LRU first
        self.hit_tokens = 0  # prompt tokens whose KV came from the cache
        self.prompt_tokens = 0  # prompt tokens admitted

    @property
    def num_free(self) -> int:
        """Pages a request can take: free ones and idle cached ones."""
        return self._alloc.num_free + len(self._idle)

    def _chain(self, prompt: Sequence[int], pages: int) -> list[bytes]:
        """The hash chain of the first `pages` full pages of `prompt` (a collision would serve
        wrong keys and values, so a cryptographic digest, not Python's `hash`)."""
        hashes, h, p = [], b"", self.page_size
        for i in range(pages):
            page = b"".join(t.to_bytes(8, "little") for t in prompt[i * p : (i + 1) * p])
            h = hashlib.blake2b(h + page, digest_size=16).digest()
            hashes.append(h)
        return hashes

    def lookup(self, prompt: Sequence[int]) -> list[int]:
        """The cached pages of the longest cached prefix of `prompt`, leaving its last token out
        (the model must still compute the logits that follow the prompt)."""
        pages: list[int] = []
        if not self.enabled:
            return pages
        for h in self._chain(prompt, (len(prompt) - 1) // self.page_size):
            if h not in self._by_hash:
                break
            pages.append(self._by_hash[h])
        return pages

    def acquire(self, table: list[int], prompt: Sequence[int], length: int) -> int | None:
        """Fill the empty `table` with the cached prefix's pages and fresh ones up to `length`
        slots; returns how many prompt tokens the cached pages hold, or None (and takes
        nothing) when too few pages are free."""
        assert not table
        hits = self.lookup(prompt)
        idle_hits = sum(page in self._idle for page in hits)
        if -(-length // self.page_size) - len(hits) > self.num_free - idle_hits:
            return None
        for page in hits:
            self._idle.pop(page, None)
            self._refs[page] = self._refs.get(page, 0) + 1
        table += hits
        self.extend(table, length)  # room checked above
        cached = len(hits) * self.page_size
        self.hit_tokens += cached
        self.prompt_tokens += len(prompt)
        return cached

    def extend(self, table: list[int], length: int) -> bool:
        """Add fresh pages to `table` until it covers `length` slots; False (and nothing taken)
        when too few pages are free."""
        need = -(-length // self.page_size) - len(table)
        if need > self.num_free:
            return False
        for _ in range(need):
            table.append(self._take())
        return True

    def _take(self) -> int:
        if self._alloc.num_free:
            page = self._alloc.ensure([], 1)[0]
        else:
            if not self._idle:
                raise RuntimeError("out of KV pages")
            page, _ = self._idle.popitem(last=False)
            del self._by_hash[self._hash.pop(page)]
        self._refs[page] = 1
        return page

    def register(self, table: Sequence[int], prompt: Sequence[int]) -> None:
        """Offer the full pages of a prefilled prompt to later requests."""
        if not self.enabled:
            return
        for page, h in zip(table, self._chain(prompt, len(prompt) // self.page_size), strict=False):
            if h not in self._by_hash and page not in self._hash:
                self._by_hash[h], self._hash[page] = page, h

    def release(self, table: list[int]) -> None:
        """A request gives its pages back: cached ones go idle, the others free."""
        for page in reversed(table):
            self._refs[page] -= 1
            if self._refs[page]:
                continue
            del self._refs[page]
            if page in self._hash:
                self._idle[page] = None
            else:
                self._alloc.release([page])
        table.clear()
