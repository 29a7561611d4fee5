# Merging what two models learned: exchanges, behaviour per variant, device identities.
#
# Strategy: every part is merged from what the model keeps, never from the captures, and by
# rules that do not depend on which model comes first (sums, unions, Distribution.merge, and
# ties broken by comparing the values themselves), so A+B == B+A and (A+B)+C == A+(B+C).
# How close a merge is to importing every capture at once, part by part:
#   * counts (requests, answered, ambiguous, findings, connect-script counts): exact sums;
#   * latency, service and by-outstanding distributions: Distribution.merge: the samples
#     themselves (exact) while both are kept and add up to at most 2,048, else each stored
#     quantile within 0.1 % (dist.py);
#   * a response's share: from the per-model counts (share x answered, exact as stored to 4
#     decimals), and responses under the learner's minimum share of the merged total dropped;
#   * heartbeat idle: per-connection measurements win over an aggregate-rate estimate, as
#     when learning;
#   * device identities: the first fact seen in variant order, as the learner keeps it (two
#     captures of one variant: the smaller value); a status report in one capture of a mesh
#     node whose device only another capture names is not recovered (the state may differ);
#   * requests of a kind that one model saw but never saw answered (it keeps no exchange for
#     it) are not counted;
#   * byte templates and connect-script delays: the ones learned from more samples (a
#     template learned from every pair at once can label a field differently when one model
#     never saw it vary);
#   * hello retries between two captures of the same device, and connect scripts beyond the
#     eight most common of each model, are not recovered.
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cyncsim.replay.model.behaviour import MAX_SCRIPTS, Behaviour, DeviceIdentity
from cyncsim.replay.model.dist import Distribution
from cyncsim.replay.model.learn import ExchangeModel, ResponseModel

__all__ = ["merge_behaviour", "merge_devices", "merge_exchanges", "merge_findings"]

_MIN_SHARE = 0.3  # as in learn.py: a response answering fewer of the answered is dropped
_T = TypeVar("_T")


def merge_exchanges(a: list[ExchangeModel], b: list[ExchangeModel]) -> list[ExchangeModel]:
    """The exchanges of both models, those of the same (request, role, variant) merged."""
    by_key: dict[tuple[str, str, str], ExchangeModel] = {}
    for ex in [*a, *b]:
        key = (ex.variant, ex.request, ex.role)
        have = by_key.get(key)
        by_key[key] = ex if have is None else _merge_exchange(have, ex)
    return [by_key[k] for k in sorted(by_key)]


def _merge_exchange(x: ExchangeModel, y: ExchangeModel) -> ExchangeModel:
    out = ExchangeModel(
        x.request, x.role, x.variant,
        x.requests + y.requests, x.answered + y.answered, x.ambiguous + y.ambiguous,
    )  # fmt: skip
    # A kind can answer a request more than once (f9 52 twice): the n-th response of a key
    # (in the learner's order, by latency) is merged with the other model's n-th.
    counts: dict[tuple[str, int], int] = {}
    merged: dict[tuple[str, int], ResponseModel] = {}
    for ex in (x, y):
        seen: dict[str, int] = {}
        for r in ex.responses:
            key = (r.key, seen.get(r.key, 0))
            seen[r.key] = key[1] + 1
            counts[key] = counts.get(key, 0) + round(r.share * ex.answered)
            have = merged.get(key)
            merged[key] = r if have is None else _merge_response(have, r)
    for key, r in sorted(merged.items()):
        if counts[key] < _MIN_SHARE * out.answered:
            continue
        r.share = round(min(counts[key] / max(1, out.answered), 1.0), 4)
        out.responses.append(r)
    out.responses.sort(key=lambda r: (r.latency.p50 if r.latency else 0.0, r.key))
    out.by_outstanding = _merge_dists(x.by_outstanding, y.by_outstanding)
    return out


def _merge_response(r: ResponseModel, s: ResponseModel) -> ResponseModel:
    # The template learned from more pairs; equal counts: the smaller exemplar (any fixed rule
    # that looks only at the two templates keeps the merge order-free).
    tpl = _pick(r, s, lambda m: (-m.latency.count, m.template.exemplar, repr(m.template)))
    service = (
        r.service.merge(s.service)
        if r.service is not None and s.service is not None
        else r.service or s.service
    )
    return ResponseModel(r.key, tpl.template, 0.0, r.latency.merge(s.latency), service)


def _merge_dists(a: dict[str, Distribution], b: dict[str, Distribution]) -> dict[str, Distribution]:
    out = dict(a)
    for k, d in b.items():
        out[k] = out[k].merge(d) if k in out else d
    return dict(sorted(out.items()))


def merge_behaviour(a: dict[str, Behaviour], b: dict[str, Behaviour]) -> dict[str, Behaviour]:
    out = dict(a)
    for v, beh in b.items():
        out[v] = _merge_one_behaviour(out[v], beh) if v in out else beh
    return dict(sorted(out.items()))


def _merge_one_behaviour(x: Behaviour, y: Behaviour) -> Behaviour:
    return Behaviour(
        x.variant,
        _merge_heartbeat(x.heartbeat_idle, y.heartbeat_idle),
        _merge_opt(x.status_interval, y.status_interval),
        _merge_opt(x.hello_retry, y.hello_retry),
        _merge_scripts(x.connect_scripts, y.connect_scripts),
        _merge_opt(x.connect_spread, y.connect_spread),
    )


def _merge_opt(a: Distribution, b: Distribution) -> Distribution:
    if not a.count or not b.count:
        return a if a.count else b
    return a.merge(b)


def _merge_heartbeat(a: Distribution, b: Distribution) -> Distribution:
    per_conn = "per-connection"
    if a.count and b.count and (a.method == per_conn) != (b.method == per_conn):
        return a if a.method == per_conn else b  # measured beats estimated, as in learning
    return _merge_opt(a, b)


Script = tuple[int, list[tuple[str, float]]]


def _merge_scripts(a: list[Script], b: list[Script]) -> list[Script]:
    counts: dict[tuple[str, ...], int] = {}
    delays: dict[tuple[str, ...], list[tuple[str, float]]] = {}
    for n, steps in [*a, *b]:
        seq = tuple(k for k, _ in steps)
        have = counts.get(seq, 0)
        # Delays of the model that saw the sequence more often; equal: the smaller delays.
        if seq not in delays or (n, _neg(steps)) > (have, _neg(delays[seq])):
            delays[seq] = steps
        counts[seq] = have + n
    ranked = sorted(counts, key=lambda s: (-counts[s], s))[:MAX_SCRIPTS]
    return [(counts[s], delays[s]) for s in ranked]


def _neg(steps: list[tuple[str, float]]) -> list[float]:
    return [-d for _, d in steps]


def merge_devices(a: list[DeviceIdentity], b: list[DeviceIdentity]) -> list[DeviceIdentity]:
    out: dict[bytes, DeviceIdentity] = {d.device_id: d for d in a}
    for d in b:
        have = out.get(d.device_id)
        out[d.device_id] = d if have is None else _merge_device(have, d)
    return [out[k] for k in sorted(out)]


def _merge_device(x: DeviceIdentity, y: DeviceIdentity) -> DeviceIdentity:
    # The learner keeps the first fact seen, reading variants in name order: so does the
    # merge (within one variant, ties are broken by value).
    first, second = sorted((x, y), key=lambda d: (d.variant, repr(d.to_obj())))
    node = first if first.mesh_node is not None else second
    return DeviceIdentity(
        first.device_id,
        first.auth_code,
        first.variant,
        dict(sorted((second.firmware | first.firmware).items())),
        node.mesh_node,
        dict(node.state),
    )


def merge_findings(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


def _pick(x: _T, y: _T, key: Callable[[_T], object]) -> _T:
    kx, ky = key(x), key(y)
    return x if kx <= ky else y  # type: ignore[operator]
