"""Nets with stable layer names: the lane classifier, the traffic-light classifier and detector."""
from pipeline.models.nets import (TASKS, LaneNet, NamedLayers, TLClassifier, TLDetector, WithAux, aux_loss,
                                  build_model)

__all__ = ["TASKS", "LaneNet", "NamedLayers", "TLClassifier", "TLDetector", "WithAux", "aux_loss", "build_model"]
