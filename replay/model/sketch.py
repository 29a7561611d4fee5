# A bounded, mergeable summary of many samples: a log-bucket histogram (DDSketch's idea).
#
# Strategy: a sample v > 0 goes to bucket i = ceil(ln v / ln gamma) with gamma = (1+a)/(1-a),
# counted; the bucket's representative 2 gamma^i / (gamma + 1) is within a relative ALPHA of
# every value in the bucket, so every order statistic read back is within ALPHA of the true
# one (negative values are mirrored, exact zeros counted apart); the exact minimum and maximum
# are kept too and bound every answer.  Merging adds counts, so it is exact, commutative and
# associative: sketching A then B, B then A, or A+B at once gives the same buckets.  The size
# is bounded by the range, not the count: ln(max/min) / ln(gamma) buckets at most (about 3,500
# for three decades at ALPHA = 0.1%), and only the non-empty ones are stored.
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["ALPHA", "LogSketch"]

ALPHA = 0.001  # relative accuracy of every value read back
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_INV_LN_GAMMA = 1.0 / math.log(_GAMMA)
_REP = 2.0 / (_GAMMA + 1.0)


def _index(v: float) -> int:
    return math.ceil(math.log(v) * _INV_LN_GAMMA)


def _rep(i: int) -> float:
    return _GAMMA**i * _REP


class LogSketch:
    """Counts per log bucket, plus the exact count, minimum and maximum."""

    __slots__ = ("count", "hi", "lo", "neg", "pos", "zero")

    def __init__(self) -> None:
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.lo = math.inf
        self.hi = -math.inf

    @classmethod
    def of(cls, values: Iterable[float], weights: Iterable[int] | None = None) -> LogSketch:
        sk = cls()
        if weights is None:  # in bulk: the same buckets as adding one at a time
            vals = values if isinstance(values, list) else list(values)
            if not vals:
                return sk
            log, k = math.log, _INV_LN_GAMMA
            pos = [math.ceil(log(v) * k) for v in vals if v > 0.0]
            neg = [math.ceil(log(-v) * k) for v in vals if v < 0.0]
            for buckets, idx in ((sk.pos, pos), (sk.neg, neg)):
                for i, c in Counter(idx).items():
                    buckets[i] = c
            sk.zero = len(vals) - len(pos) - len(neg)
            sk.count = len(vals)
            sk.lo, sk.hi = min(vals), max(vals)
        else:
            for v, w in zip(values, weights, strict=True):
                sk.add(v, w)
        return sk

    def add(self, v: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        if v > 0.0:
            i = _index(v)
            self.pos[i] = self.pos.get(i, 0) + weight
        elif v < 0.0:
            i = _index(-v)
            self.neg[i] = self.neg.get(i, 0) + weight
        else:
            self.zero += weight
        self.count += weight
        self.lo = min(self.lo, v)
        self.hi = max(self.hi, v)

    def merge(self, other: LogSketch) -> None:
        """Add ``other``'s counts to this sketch (exact)."""
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for i, c in theirs.items():
                mine[i] = mine.get(i, 0) + c
        self.zero += other.zero
        self.count += other.count
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)

    def copy(self) -> LogSketch:
        new = LogSketch()
        new.merge(self)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogSketch):
            return NotImplemented
        return (self.pos, self.neg, self.zero, self.count, self.lo, self.hi) == (
            other.pos,
            other.neg,
            other.zero,
            other.count,
            other.lo,
            other.hi,
        )

    __hash__ = None  # type: ignore[assignment]

    def _buckets(self) -> Iterator[tuple[float, int]]:
        """(representative, count) in ascending order of value, clamped to [lo, hi]."""
        lo, hi = self.lo, self.hi
        for i in sorted(self.neg, reverse=True):
            yield min(max(-_rep(i), lo), hi), self.neg[i]
        if self.zero:
            yield 0.0, self.zero
        for i in sorted(self.pos):
            yield min(max(_rep(i), lo), hi), self.pos[i]

    def order_statistics(self, ranks: Sequence[int]) -> list[float]:
        """The values of the given 0-based order statistics (ascending ranks)."""
        out: list[float] = []
        buckets = self._buckets()
        seen, value = 0, 0.0
        last = self.count - 1
        for r in ranks:
            if r <= 0:
                out.append(self.lo)
                continue
            if r >= last:
                out.append(self.hi)
                continue
            while seen <= r:
                value, c = next(buckets)
                seen += c
            out.append(value)
        return out

    def quantiles(self, cap: int) -> list[float]:
        """``cap`` evenly spaced quantiles (0..1), each interpolated between order statistics
        exactly as ``dist.sorted_quantile`` does over sorted samples."""
        n = self.count
        if n == 0:
            return []
        if cap == 1 or n == 1:
            return [self.lo] if cap == 1 else [self.lo] * cap
        positions = [k / (cap - 1) * (n - 1) for k in range(cap)]
        ranks = sorted({r for p in positions for r in (int(p), min(int(p) + 1, n - 1))})
        stats = dict(zip(ranks, self.order_statistics(ranks), strict=True))
        out = []
        for p in positions:
            lo = int(p)
            if lo >= n - 1:
                out.append(stats[n - 1])
                continue
            a, b = stats[lo], stats[lo + 1]
            out.append(a + (b - a) * (p - lo))
        return out

    # -------------------------------------------------------------- persistence
    def to_obj(self) -> dict[str, object]:
        """Buckets as flat [index delta, count, ...] lists: small integers pack small."""
        return {
            "alpha": ALPHA,
            "zero": self.zero,
            "pos": _flat(self.pos),
            "neg": _flat(self.neg),
        }

    @classmethod
    def from_obj(cls, obj: dict[str, object], lo: float, hi: float) -> LogSketch:
        if obj.get("alpha") != ALPHA:
            raise ValueError(f"sketch accuracy {obj.get('alpha')!r}, this cyncsim uses {ALPHA}")
        zero = obj["zero"]
        if not isinstance(zero, int) or zero < 0:
            raise ValueError("sketch zero count of the wrong type")
        sk = cls()
        sk.zero = zero
        sk.pos = _unflat(obj["pos"])
        sk.neg = _unflat(obj["neg"])
        sk.count = zero + sum(sk.pos.values()) + sum(sk.neg.values())
        sk.lo, sk.hi = lo, hi
        return sk


def _flat(buckets: dict[int, int]) -> list[int]:
    out: list[int] = []
    prev = 0
    for i in sorted(buckets):
        out += (i - prev, buckets[i])
        prev = i
    return out


def _unflat(obj: object) -> dict[int, int]:
    if not isinstance(obj, list | tuple) or len(obj) % 2:
        raise ValueError("sketch buckets must be a flat list of (index delta, count)")
    out: dict[int, int] = {}
    i = 0
    for k in range(0, len(obj), 2):
        d, c = obj[k], obj[k + 1]
        if not isinstance(d, int) or not isinstance(c, int) or c <= 0 or (k and d <= 0):
            raise ValueError("sketch buckets must be increasing indices with positive counts")
        i += d
        out[i] = c
    return out
