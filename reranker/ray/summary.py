"""What a finished rerank job did: totals and each replica's throughput."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class ReplicaTotals:
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0  # time spent answering, not waiting for work


@dataclass
class JobSummary:
    requests: int = 0
    failed: int = 0
    documents: int = 0
    tokens: int = 0
    replicas: dict[str, ReplicaTotals] = field(default_factory=lambda: defaultdict(ReplicaTotals))

    def add(self, replica: str, seconds: float, documents: int, tokens: int | None,
            ok: bool) -> None:
        """One answered request: which replica, how long, how many documents and tokens."""
        self.requests += 1
        self.failed += not ok
        self.documents += documents
        self.tokens += tokens or 0
        totals = self.replicas[replica]
        totals.requests += 1
        totals.tokens += tokens or 0
        totals.seconds += seconds

    def lines(self, wall_seconds: float) -> list[str]:
        rate = self.tokens / wall_seconds if wall_seconds > 0 else 0.0
        out = [f"{self.requests} requests ({self.failed} failed), {self.documents} documents, "
               f"{self.tokens} tokens in {wall_seconds:.1f} s: {rate:.0f} tokens/s"]
        for name, totals in sorted(self.replicas.items()):
            busy = totals.tokens / totals.seconds if totals.seconds > 0 else 0.0
            out.append(f"  replica {name}: {totals.requests} requests, {totals.tokens} tokens, "
                       f"{totals.seconds:.1f} s busy, {busy:.0f} tokens/s while busy")
        return out
