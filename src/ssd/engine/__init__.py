"""Host-side engine: requests, scheduling, page bookkeeping, and the decoding loops."""
