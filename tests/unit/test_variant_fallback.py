# The exchange fallback keeps the role and the variant (issue 13, deviation 2): a request
# kind only another variant learned takes this variant's timing for the same packet type
# when this variant has a sibling that answers with the same response kinds, and the other
# variant's exchange only when it has none.  Synthetic models with known latencies.
from __future__ import annotations

from cyncsim.replay.engine import ModelView
from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.model.learn import ExchangeModel, ResponseModel
from cyncsim.replay.model.template import Template


def _ex(request: str, variant: str, latency: float, *keys: str, requests: int = 10,
        role: str = "cloud") -> ExchangeModel:  # fmt: skip
    ex = ExchangeModel(request, role, variant, requests, requests)
    for key in keys:
        tpl = Template(bytes.fromhex("88 00 00 00 03 00 01 00"), ())
        ex.responses.append(ResponseModel(key, tpl, 1.0, Distribution.constant(latency)))
    return ex


def _model(*exchanges: ExchangeModel) -> DeviceModel:
    return DeviceModel(exchanges=list(exchanges))


def _latency(ex: ExchangeModel | None) -> float:
    assert ex is not None
    return ex.responses[0].latency.values[0]


def test_the_key_in_the_variant_comes_first() -> None:
    m = _model(_ex("0x83:fa:db", "cloud", 0.043, "0x88"), _ex("0x83:fa:db", "local", 0.12, "0x88"))
    assert _latency(m.exchange("0x83:fa:db", "cloud", "cloud")) == 0.043
    assert _latency(m.exchange("0x83:fa:db", "cloud", "local")) == 0.12


def test_a_sibling_of_the_same_variant_before_another_variant() -> None:
    m = _model(
        _ex("0x83:fa:00", "cloud", 0.042, "0x88", requests=12),
        _ex("0x83:fa:14", "cloud", 0.050, "0x88", requests=3),
        _ex("0x83:fa:db", "local", 0.12, "0x88"),
    )
    got = m.exchange("0x83:fa:db", "cloud", "cloud")
    assert got is not None and (got.variant, got.request) == ("cloud", "0x83:fa:00")
    assert _latency(got) == 0.042  # the most requested sibling
    # The local variant has the key itself.
    assert _latency(m.exchange("0x83:fa:db", "cloud", "local")) == 0.12
    # Through the view, as CyncCloudSimulator's engine sees it.
    plans = ModelView.get(m, "cloud", "cloud").plans("0x83:fa:db")
    assert plans is not None and plans[0].delay.values == (0.042,)


def test_the_bare_packet_type_of_the_variant_is_a_sibling_too() -> None:
    m = _model(_ex("0x83", "cloud", 0.044, "0x88"), _ex("0x83:fa:db", "local", 0.12, "0x88"))
    assert _latency(m.exchange("0x83:fa:db", "cloud", "cloud")) == 0.044


def test_a_sibling_with_other_response_kinds_is_not_borrowed() -> None:
    # A command never takes another opcode's f9 result: the other variant's exchange wins.
    m = _model(
        _ex("0x73:f8:8e", "cloud", 0.06, "0x7b", "0x73:f9:8e", role="device"),
        _ex("0x73:f8:d0", "local", 0.13, "0x7b", "0x73:f9:d0", role="device"),
    )
    got = m.exchange("0x73:f8:d0", "device", "cloud")
    assert got is not None and (got.variant, got.request) == ("local", "0x73:f8:d0")


def test_the_role_is_kept_and_unknown_kinds_fall_to_the_bare_type() -> None:
    m = _model(
        _ex("0x83:fa:00", "cloud", 0.042, "0x88", role="device"),
        _ex("0x83:fa:db", "local", 0.12, "0x88"),
        _ex("0x73", "cloud", 0.2, "0x7b", role="device"),
    )
    got = m.exchange("0x83:fa:db", "cloud", "cloud")
    assert got is not None and got.variant == "local"  # the device's exchange is not the cloud's
    bare = m.exchange("0x73:f8:99", "device", "local")
    assert bare is not None and bare.request == "0x73"
    assert m.exchange("0xa3", "cloud", "cloud") is None
