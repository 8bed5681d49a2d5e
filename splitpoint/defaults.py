"""Every default that more than one part (or the command line) relies on, in one place.

The edge, the worker and the CLI must agree on these (a message limit raised on one
side only fails at run time), so each is defined once here and imported where used.
"""

from __future__ import annotations

# gRPC message limits: raised on both ends, real activations exceed gRPC's default 4 MiB.
MAX_MESSAGE_BYTES = 512 << 20
# The most a request's tensors may decode to on the worker (checked before allocating).
MAX_DECODED_BYTES = 1 << 30

# Byte-shuffle then zstd level 1: fewer bytes than plain zstd on float activations
# at a similar speed (benchmarks/codec.md).
CODEC = "shuffle-zstd:1"
ZSTD_LEVEL = 3  # a zstd stage given without a level

# The edge
DEADLINE_MS = 1000.0  # latency budget of a call to the worker; past it the suffix finishes locally
FAILURE_THRESHOLD = 3  # consecutive failures that open the circuit
MAX_ATTEMPTS = 3  # tries of one call on UNAVAILABLE

# The worker
PORT = 8500
MAX_INFLIGHT = 2  # requests computing at once
MAX_QUEUE = 32  # requests waiting for a slot; more are refused with RESOURCE_EXHAUSTED
GRACE_S = 5.0  # how long a stopping worker lets in-flight calls finish
TRITON_MAX_BATCH = 32  # max_batch_size written by export-triton

# The partitioner
MIN_AGREEMENT = 0.99  # lossy codecs: share of calibration samples whose top-1 must match
RTT_MS = 20.0  # the link a --candidates auto bundle's default split is chosen for
BANDWIDTH_BPS = 10e6
PROFILE_RUNS = 20
PROFILE_WARMUP = 5
