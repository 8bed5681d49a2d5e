"""The predicted cost of any prefix of a model: profiles for compute, the codec for transfers.

A prefix is any set of compute nodes closed under predecessors (everything a
node needs runs before it); ``cuts.partition`` decides what it sends, so costs
follow exactly the semantics the bundle is cut with. Its ``SplitCost``:

- edge_ms: the prefix as one call on the edge profile, ending with the tensors it
  sends (``Profile.prefix_ms``: the nodes plus the boundary's per-MB out side);
- cloud_ms / local_suffix_ms: the rest as one call on the cloud / edge profile,
  starting from those tensors (``Profile.suffix_ms``: plus the boundary's in side);
- encode_ms, decode_ms, sent_bytes: the sent tensors through the codec, as
  measured on the golden run (``transfer``), each tensor once;
- response_bytes: the raw graph outputs the cloud computes.

The prefix of every node is ``local``; the empty prefix is ``cloud``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from partitioner.cuts import Cut, partition
from partitioner.errors import PartitionError
from partitioner.formats import ModelSource
from partitioner.memory import EdgeMemory
from partitioner.profile import Profile
from partitioner.transfer import Transfers, measure_transfers, sent_cost
from splitpoint.bundle import CLOUD, LOCAL, file_sha256, slug
from splitpoint.cost import SplitCost


@dataclass(frozen=True)
class Choice:
    """One split with its predicted cost: ``at`` is what ``split --at`` takes (empty for local and cloud)."""

    id: str
    prefix: frozenset[int]
    at: tuple[str, ...]
    sent: tuple[str, ...]
    cost: SplitCost
    edge_mb: float


@dataclass
class CostModel:
    source: ModelSource
    model_sha256: str
    edge: Profile
    cloud: Profile
    transfers: Transfers
    memory: EdgeMemory

    @classmethod
    def build(cls, source: ModelSource, edge: Profile, cloud: Profile, codec: str, log: Callable[[str], None]) -> CostModel:
        """Check the profiles belong to ``source`` and measure the codec on its golden run."""
        sha = file_sha256(source.path)
        for p in (edge, cloud):
            p.check(sha, source.input_shapes, source.view.order)
        transfers = measure_transfers(source, codec, log)
        return cls(source, sha, edge, cloud, transfers, EdgeMemory(source.view, transfers.sizes))

    @property
    def nodes(self) -> frozenset[int]:
        return frozenset(self.source.view.order)

    def cut(self, prefix: Collection[int]) -> tuple[Cut, tuple[str, ...]]:
        """The cut whose prefix is exactly ``prefix``, and the names that make it (for ``--at``).

        The names are the tensors sent and the graph outputs computed on the edge;
        a prefix ending in nodes whose outputs nobody reads names those outputs too.
        """
        view = self.source.view
        prefix = frozenset(prefix)
        last = [i for i in view.order if i in prefix and not any(s in prefix for s in view.dag.successors(i))]
        every = [o for i in last for o in view.graph.node[i].output if o]
        cut = partition(view, every)
        names = [t for t in cut.sent if t in view.producer] + [o for o in cut.edge_outputs if o not in cut.sent]
        tidy = partition(view, names)
        if tidy.prefix == prefix:
            return tidy, tuple(names)
        assert cut.prefix == prefix, "a prefix is closed under predecessors"
        return cut, tuple(dict.fromkeys([*names, *every]))

    def cost(self, prefix: Collection[int]) -> SplitCost:
        """The predicted cost of the split with this prefix."""
        prefix = frozenset(prefix)
        if prefix == self.nodes:
            return SplitCost(edge_ms=self.edge.segment_ms(prefix), local=True)
        cut, _ = self.cut(prefix)
        refused = [t for t in cut.sent if t not in self.transfers.tensors]
        if refused:
            raise PartitionError(f"tensor {refused[0]!r} cannot be sent with codec {self.transfers.codec}: "
                                 f"{self.transfers.unsendable.get(refused[0], 'not measured')}")
        nbytes, encode_ms, decode_ms = sent_cost(self.transfers, cut.sent)
        returned = [o for o in self.source.view.outputs if o not in cut.edge_outputs]
        crossing = sum(self._boundary_bytes(t) for t in cut.sent)
        return SplitCost(
            edge_ms=self.edge.prefix_ms(prefix, crossing),
            cloud_ms=self.cloud.suffix_ms(cut.suffix, crossing),
            local_suffix_ms=self.edge.suffix_ms(cut.suffix, crossing),
            encode_ms=encode_ms,
            decode_ms=decode_ms,
            sent_bytes=nbytes,
            response_bytes=sum(self.transfers.sizes.get(o, 0) for o in returned),
        )

    def tensor_cost(self, name: str) -> SplitCost:
        """What sending tensor ``name`` adds to a split: the codec, the wire and the boundary on both sides.

        The min-cut prices each crossing tensor with this; ``cost`` sums the same terms.
        """
        t = self.transfers.tensors[name]
        mb = self._boundary_bytes(name) / 1e6
        return SplitCost(self.edge.boundary.out_ms_per_mb * mb, cloud_ms=self.cloud.boundary.in_ms_per_mb * mb,
                         encode_ms=t.encode_ms, decode_ms=t.decode_ms, sent_bytes=t.encoded_bytes)

    def _boundary_bytes(self, name: str) -> int:
        """Raw bytes of ``name`` at a segment boundary: graph inputs cross none (the whole model starts from them)."""
        return self.transfers.sizes.get(name, 0) if name in self.source.view.producer else 0

    def choice(self, prefix: Collection[int]) -> Choice:
        prefix = frozenset(prefix)
        if prefix == self.nodes:
            return Choice(LOCAL, prefix, (), (), self.cost(prefix), self.memory.prefix_mb(prefix, self.source.view.outputs))
        cut, names = self.cut(prefix)
        kept = [*cut.sent, *cut.edge_outputs]
        split_id = slug("+".join(cut.sent)) if prefix else CLOUD
        return Choice(split_id, prefix, names if prefix else (), cut.sent, self.cost(prefix),
                      self.memory.prefix_mb(prefix, kept))
