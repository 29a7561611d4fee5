# What cyncsim learns from captures: exchanges with byte templates and latency
# distributions, spontaneous behaviour, device identities; saved as versioned msgpack.
from replay.model.behaviour import Behaviour, DeviceIdentity
from replay.model.dist import Distribution, StratifiedUniform
from replay.model.learn import ExchangeModel, ResponseModel
from replay.model.store import FORMAT, VERSION, DeviceModel, import_captures, learn_model
from replay.model.template import Template, TemplateField

__all__ = [
    "FORMAT",
    "VERSION",
    "Behaviour",
    "DeviceIdentity",
    "DeviceModel",
    "Distribution",
    "ExchangeModel",
    "ResponseModel",
    "StratifiedUniform",
    "Template",
    "TemplateField",
    "import_captures",
    "learn_model",
]
