"""Deterministic pairwise / 3-wise covering arrays with constraints and seed rows.

Algorithm: a greedy one-row-at-a-time construction (AETG/DDA family) followed by a
TCA-style tabu local search that deletes rows while it can repair coverage.

* Values are numbered globally as *items*.  Every required t-tuple of items keeps a
  coverage count, and for each (t-1)-subset of a tuple there are Python-int bitsets of
  the remaining items whose tuple is uncovered (count 0) or covered once (count 1), so
  "how many tuples would item x add to / remove from this row" is a few
  ``(mask & row_mask).bit_count()`` calls: fast enough in pure Python.
* Construction: each row starts from one uncovered tuple (the item with the most
  uncovered tuples plus its busiest partners); then the (axis, value) with the best
  gain over *all* free axes is fixed, ties broken by look-ahead on the free axes and
  then by a seeded random priority.  Several AETG candidates per row measured no
  better once the local search runs, so one is built.
* Shrinking: whenever everything is covered, the row covering the fewest tuples on its
  own is dropped; then each step takes a random uncovered tuple and writes it into the
  row where that costs least (cells just changed are tabu).  Steps are bounded by a
  work budget and a patience rule, never a clock, so output is reproducible; the
  smallest complete array seen is returned.

Why not a library (benchmarks/expand.py, strength 2 on 3^4, 2^10, 3^13, 5^4 6 7 8 and
4^15 3^17 2^29): allpairspy gives 9/8/17/69/37 rows, and its n=3 and constrained
outputs miss tuples (allpairspy issue #12); covertable is complete but gives
13/9/19/62/36 rows and takes ~19 s on the last model.  This module gives 9/6/15/56/30
(best known: 9/6/15/56/~30) in about 0.6 s for the largest; the greedy alone would be
allpairspy-sized, the local search is what closes the gap.

Constraints are a monotone predicate on partial assignments.  Tuples it rejects are
not required; tuples that pass it but fit in no valid full row are found by a bounded
backtracking search (forward checking, smallest domain first) and dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import combinations, product

Allowed = Callable[[Mapping[int, int]], bool]

# Calls to `allowed` one backtracking completion may spend before the tuple it
# tries to place is declared impossible (keeps pathological constraints finite).
_SEARCH_BUDGET = 50_000
# Local-search step budget = _LS_WORK / (estimated cost of one step); calibrated so the
# 61-axis benchmark model stays well under 2 s.  Search also stops after `patience`
# steps plus twice the steps the last removed row took, since gains come early.
_LS_WORK = 800_000
_PATIENCE = 1000
_TABU = 3  # steps a changed cell stays frozen, so the search does not just undo itself
_NOISE = 0.02  # share of random-walk steps; tabu plus a little noise leaves plateaus
_FOREVER = 1 << 62


class _Cover:
    """Coverage counts of the required t-tuples and their count-0 / count-1 bitsets."""

    def __init__(self, sizes: Sequence[int], t: int, allowed: Allowed | None) -> None:
        self.t = t
        self.off = [0]
        for s in sizes:
            self.off.append(self.off[-1] + s)
        self.axis = [a for a, s in enumerate(sizes) for _ in range(s)]
        self.count: dict[tuple[int, ...], int] = {}
        self.unc: dict[tuple[int, ...], int] = {}
        self.one: dict[tuple[int, ...], int] = {}
        for axes in combinations(range(len(sizes)), t):
            for values in product(*(range(sizes[a]) for a in axes)):
                if allowed is not None and not allowed(dict(zip(axes, values, strict=True))):
                    continue  # never coverable, so never required
                tup = tuple(self.off[a] + v for a, v in zip(axes, values, strict=True))
                self.count[tup] = 0
                self._flip(self.unc, tup)
        self.n_unc = len(self.count)

    def _flip(self, masks: dict[tuple[int, ...], int], tup: tuple[int, ...]) -> None:
        if self.t == 2:  # hot path of every count update
            x, y = tup
            masks[(x,)] = masks.get((x,), 0) ^ (1 << y)
            masks[(y,)] = masks.get((y,), 0) ^ (1 << x)
            return
        for i in range(self.t):
            key = tup[:i] + tup[i + 1 :]
            masks[key] = masks.get(key, 0) ^ (1 << tup[i])

    def score(
        self, masks: dict[tuple[int, ...], int], x: int, ctx: Sequence[int], ctx_mask: int
    ) -> int:
        """Number of tuples in `masks` made of item x and t-1 items of ctx."""
        if self.t == 2:
            return (masks.get((x,), 0) & ctx_mask).bit_count()
        total = 0  # t == 3: a triple (x, y, z) is seen from y and from z
        for y in ctx:
            total += (masks.get((y, x) if y < x else (x, y), 0) & ctx_mask).bit_count()
        return total // 2

    def touching(self, new: Sequence[int], base: Sequence[int]) -> Iterator[tuple[int, ...]]:
        """Tuples of the row base+new that contain at least one item of new."""
        for i, x in enumerate(new):
            if self.t == 2:  # hot path: no combinations()/sorted() per pair
                for y in (*base, *new[i + 1 :]):
                    yield (x, y) if x < y else (y, x)
                continue
            for rest in combinations([*base, *new[i + 1 :]], self.t - 1):
                yield tuple(sorted((*rest, x)))

    def bump(self, tuples: Iterator[tuple[int, ...]], delta: int) -> None:
        for tup in tuples:
            c = self.count.get(tup)
            if c is None:
                continue  # not required (impossible)
            self.count[tup] = c + delta
            if c + delta == 0 or c == 0:
                self._flip(self.unc, tup)
                self.n_unc += 1 if c else -1
            if c + delta == 1 or c == 1:
                self._flip(self.one, tup)

    def drop(self, tup: tuple[int, ...]) -> None:
        """Forget an uncovered tuple that no valid row can contain."""
        del self.count[tup]
        self._flip(self.unc, tup)
        self.n_unc -= 1

    def uncovered(self) -> list[tuple[int, ...]]:
        out = []
        for key, mask in self.unc.items():
            while mask:
                low = mask & -mask
                x = low.bit_length() - 1
                mask ^= low
                if x > key[-1]:  # report each tuple once: from its largest-item-free key
                    out.append((*key, x))
        return out

    def lower_bound(self) -> int:
        per_axes: dict[tuple[int, ...], int] = {}
        for tup in self.count:
            axes = tuple(self.axis[x] for x in tup)
            per_axes[axes] = per_axes.get(axes, 0) + 1
        return max(per_axes.values(), default=0)


class _Generator:
    def __init__(self, sizes: Sequence[int], t: int, seed: int, allowed: Allowed | None) -> None:
        self.sizes = list(sizes)
        self.k = len(sizes)
        self.allowed = allowed
        self.rng = random.Random(seed)
        self.cov = _Cover(sizes, t, allowed)
        self.n_items = self.cov.off[-1]

    def ok(self, row: Mapping[int, int]) -> bool:
        return self.allowed is None or self.allowed(dict(row))

    def fits(self, items: list[int], new: list[int]) -> bool:
        """Is the row of `items` with the `new` items written over it still allowed?"""
        if self.allowed is None:
            return True
        off, axis = self.cov.off, self.cov.axis
        return self.allowed({axis[x]: x - off[axis[x]] for x in [*items, *new]})

    def greedy_row(self, fixed: Mapping[int, int], prio: list[int]) -> list[int] | None:
        """Fill the free axes one (axis, value) at a time, best new coverage first."""
        cov, off = self.cov, self.cov.off
        row = dict(fixed)
        items = [off[a] + v for a, v in row.items()]
        mask = sum(1 << x for x in items)
        free = [a for a in range(self.k) if a not in row]
        free_mask = sum(((1 << self.sizes[a]) - 1) << off[a] for a in free)
        free_items = [x for a in free for x in range(off[a], off[a + 1])]
        banned: set[int] = set()
        while free:
            scored = []
            for a in free:
                for x in range(off[a], off[a + 1]):
                    if x not in banned:
                        gain = cov.score(cov.unc, x, items, mask)
                        look = cov.score(cov.unc, x, free_items, free_mask)
                        scored.append(((gain << 40) | (look << 20) | prio[x], a, x))
            scored.sort(reverse=True)
            for _, a, x in scored:
                row[a] = x - off[a]
                if self.ok(row):
                    break
                del row[a]
                banned.add(x)  # monotone predicate: stays invalid for this row
            else:
                return None
            items.append(x)
            mask |= 1 << x
            free.remove(a)
            free_mask &= ~(((1 << self.sizes[a]) - 1) << off[a])
            free_items = [y for y in free_items if self.cov.axis[y] != a]
        return [row[a] for a in range(self.k)]

    def complete(self, fixed: Mapping[int, int]) -> list[int] | None:
        """Bounded backtracking (MRV + forward checking) for any valid completion."""
        if self.allowed is None:
            return [fixed.get(a, 0) for a in range(self.k)]
        allowed, budget = self.allowed, [_SEARCH_BUDGET]

        def prune(row: dict[int, int], doms: dict[int, list[int]]) -> dict[int, list[int]] | None:
            out = {}
            for b, dom in doms.items():
                budget[0] -= len(dom)
                keep = [w for w in dom if allowed({**row, b: w})]
                if not keep or budget[0] < 0:
                    return None
                out[b] = keep
            return out

        def search(row: dict[int, int], doms: dict[int, list[int]]) -> dict[int, int] | None:
            if not doms:
                return row
            b = min(doms, key=lambda a: (len(doms[a]), a))
            rest = {a: d for a, d in doms.items() if a != b}
            for w in doms[b]:
                new = {**row, b: w}
                sub = prune(new, rest)
                found = search(new, sub) if sub is not None else None
                if found is not None or budget[0] < 0:
                    return found
            return None

        row = dict(fixed)
        doms = prune(row, {a: list(range(s)) for a, s in enumerate(self.sizes) if a not in row})
        found = search(row, doms) if doms is not None else None
        return None if found is None else [found[a] for a in range(self.k)]

    def add_row(self, row: list[int]) -> list[int]:
        items = [self.cov.off[a] + v for a, v in enumerate(row)]
        self.cov.bump(self.cov.touching(items, []), +1)
        return items

    def target(self, prio: list[int]) -> tuple[int, ...]:
        """An uncovered tuple: the busiest item, then its busiest uncovered partners."""
        cov = self.cov
        everything = list(range(self.n_items))
        busy = [cov.score(cov.unc, x, everything, (1 << self.n_items) - 1) for x in everything]
        x = max(everything, key=lambda i: (busy[i], prio[i]))
        cur: tuple[int, ...] = (x,)
        while len(cur) < cov.t - 1:  # only for t=3: pick y with some uncovered (x, y, .)
            options = [y for y in everything if cov.unc.get(tuple(sorted((*cur, y))), 0)]
            cur = tuple(sorted((*cur, max(options, key=lambda i: (busy[i], prio[i])))))
        mask = cov.unc[cur]
        options = [y for y in everything if mask >> y & 1]
        return tuple(sorted((*cur, max(options, key=lambda i: (busy[i], prio[i])))))

    def priorities(self) -> list[int]:
        prio = list(range(self.n_items))
        self.rng.shuffle(prio)
        return prio

    def construct(self, seeds: Sequence[Sequence[int | None]]) -> list[list[int]]:
        """Seed rows first, then one greedy row per uncovered target tuple."""
        off, axis = self.cov.off, self.cov.axis
        rows: list[list[int]] = []
        for i, seed_row in enumerate(seeds):
            fixed = {a: v for a, v in enumerate(seed_row) if v is not None}
            if not self.ok(fixed):
                raise ValueError(f"must_include row {i} violates the constraints: {list(seed_row)}")
            row = self.greedy_row(fixed, self.priorities())
            row = self.complete(fixed) if row is None else row
            if row is None:
                raise ValueError(f"must_include row {i} cannot be completed to a valid row")
            rows.append(self.add_row(row))
        while self.cov.n_unc:  # each pass covers or drops at least the target tuple
            prio = self.priorities()
            tup = self.target(prio)
            fixed = {axis[x]: x - off[axis[x]] for x in tup}
            row = self.greedy_row(fixed, prio)
            row = self.complete(fixed) if row is None else row
            if row is None:
                self.cov.drop(tup)  # implicitly impossible: no valid row contains it
            else:
                rows.append(self.add_row(row))
        return rows

    def shrink(self, rows: list[list[int]], frozen: list[set[int]]) -> list[list[int]]:
        """Tabu local search that removes rows while it can repair coverage."""
        cov, rng, axis, t = self.cov, self.rng, self.cov.axis, self.cov.t
        n_fixed = len(frozen)
        masks = [sum(1 << x for x in row) for row in rows]
        # tabu[r][a]: first step at which cell (r, a) may change again; seed cells never.
        tabu = [
            [_FOREVER if r < n_fixed and a in frozen[r] else 0 for a in range(self.k)]
            for r in range(len(rows))
        ]
        best = [list(r) for r in rows]
        floor = max(cov.lower_bound(), n_fixed)
        per_step = 100 + len(rows) * (1 + (t - 2) * self.k) + self.k ** (t - 1)
        budget = _LS_WORK // per_step
        last_gain = 0
        patience = min(_PATIENCE, 4 * len(cov.count))
        for step in range(budget):
            if not cov.n_unc:
                best = [list(r) for r in rows]
                last_gain = step
                if len(rows) <= floor:
                    break
                # Drop the free row whose loss uncovers least (coverage is repaired next).
                r = min(
                    range(n_fixed, len(rows)),
                    key=lambda i: (
                        sum(cov.score(cov.one, x, rows[i], masks[i]) for x in rows[i]),
                        rng.random(),
                    ),
                )
                cov.bump(cov.touching(rows[r], []), -1)
                del rows[r], masks[r], tabu[r]
                continue
            if step > 2 * last_gain + patience:
                break  # stagnating: further rows are unlikely to go within the budget
            pending = cov.uncovered()
            tup = pending[rng.randrange(len(pending))]
            cells = [axis[x] for x in tup]
            moves = []
            for r, row in enumerate(rows):
                new = [x for x, a in zip(tup, cells, strict=True) if row[a] != x]
                if any(tabu[r][axis[x]] > step for x in new):
                    continue
                old = [row[axis[x]] for x in new]
                base_mask = masks[r] & ~sum(1 << x for x in old)
                base = [x for x in row if base_mask >> x & 1] if t > 2 else []
                delta = 0
                for i in range(len(new)):
                    m_old = base_mask | sum(1 << x for x in old[i + 1 :])
                    m_new = base_mask | sum(1 << x for x in new[i + 1 :])
                    delta += cov.score(cov.unc, new[i], [*base, *new[i + 1 :]], m_new)
                    delta -= cov.score(cov.one, old[i], [*base, *old[i + 1 :]], m_old)
                moves.append((delta, rng.random(), r, new, old))
            if rng.random() < _NOISE:
                rng.shuffle(moves)  # occasional random walk to leave plateaus
            else:
                moves.sort(reverse=True)
            move = next((m for m in moves if self.fits(rows[m[2]], m[3])), None)
            if move is None:
                continue  # every row is tabu for this tuple, or would break a constraint
            _, _, r, new, old = move
            row = rows[r]
            base = [x for x in row if x not in old]
            cov.bump(cov.touching(old, base), -1)
            cov.bump(cov.touching(new, base), +1)
            for x_old, x_new in zip(old, new, strict=True):
                row[axis[x_new]] = x_new
                masks[r] ^= (1 << x_old) | (1 << x_new)
                tabu[r][axis[x_new]] = step + _TABU
        return rows if not cov.n_unc else best


def _full_product(
    sizes: Sequence[int], allowed: Allowed | None, seeds: list[dict[int, int]]
) -> list[tuple[int, ...]]:
    """strength > number of axes: every valid row, seed rows first."""
    valid = [
        row
        for row in product(*(range(s) for s in sizes))
        if allowed is None or allowed(dict(enumerate(row)))
    ]
    out: list[tuple[int, ...]] = []
    for i, fixed in enumerate(seeds):
        if allowed is not None and not allowed(dict(fixed)):
            raise ValueError(f"must_include row {i} violates the constraints")
        fits = [r for r in valid if all(r[a] == v for a, v in fixed.items())]
        if not fits:
            raise ValueError(f"must_include row {i} cannot be completed to a valid row")
        out.append(next((r for r in fits if r not in out), fits[0]))
    return out + [r for r in valid if r not in out]


def covering_array(
    sizes: Sequence[int],
    strength: int = 2,
    seed: int = 0,
    allowed: Callable[[Mapping[int, int]], bool] | None = None,
    must_include: Sequence[Sequence[int | None]] = (),
) -> list[tuple[int, ...]]:
    """Rows (value indices per axis) covering every valid `strength`-tuple of values.

    `allowed` receives partial assignments {axis: value} and must be monotone (a
    rejected partial assignment stays rejected when more axes are assigned).  Rows of
    `must_include` come first, in order, with their None slots filled; passing the
    previous run's rows keeps them as a prefix when an axis gains values (pad a new
    axis with None).  Same inputs and seed give the same output in every process (same
    Python version).  Returns [] if no valid row exists.
    """
    if strength not in (2, 3):
        raise ValueError(f"strength must be 2 or 3, got {strength}")
    if any(s < 1 for s in sizes):
        raise ValueError(f"every axis needs at least one value, got sizes {list(sizes)}")
    seeds: list[dict[int, int]] = []
    for i, seed_row in enumerate(must_include):
        if len(seed_row) != len(sizes):
            raise ValueError(f"must_include row {i} has {len(seed_row)} cells, need {len(sizes)}")
        if any(v is not None and not 0 <= v < s for v, s in zip(seed_row, sizes, strict=True)):
            raise ValueError(f"must_include row {i} has a value out of range: {list(seed_row)}")
        seeds.append({a: v for a, v in enumerate(seed_row) if v is not None})
    if strength > len(sizes):
        return _full_product(sizes, allowed, seeds)
    gen = _Generator(sizes, strength, seed, allowed)
    rows = gen.construct(must_include)
    rows = gen.shrink(rows, [set(s) for s in seeds])
    off = gen.cov.off
    return [tuple(x - off[a] for a, x in enumerate(row)) for row in rows]
