# What cyncsim learns from captures: exchanges with byte templates and latency
# distributions, spontaneous behaviour, device identities; saved as versioned msgpack, and
# merged model with model (merge_models) as if their captures had been imported together.
from cyncsim.replay.model.behaviour import Behaviour, DeviceIdentity
from cyncsim.replay.model.dist import Distribution, StratifiedUniform
from cyncsim.replay.model.importer import ModelLearner, import_captures, learn_model
from cyncsim.replay.model.learn import ExchangeModel, ResponseModel
from cyncsim.replay.model.store import FORMAT, VERSION, DeviceModel, merge_models
from cyncsim.replay.model.template import Template, TemplateField

__all__ = [
    "FORMAT",
    "VERSION",
    "Behaviour",
    "DeviceIdentity",
    "DeviceModel",
    "Distribution",
    "ExchangeModel",
    "ModelLearner",
    "ResponseModel",
    "StratifiedUniform",
    "Template",
    "TemplateField",
    "import_captures",
    "learn_model",
    "merge_models",
]
