"""Normalizing flows for DiCMoR: Glow steps and the class-conditional prior.

Glow: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
DiCMoR: Wang, Cui & Li, "Distribution-Consistent Modal Recovering for Incomplete Multimodal
Learning", ICCV 2023.
"""

from dicmor.flows.actnorm import ActNorm
from dicmor.flows.coupling import AffineCoupling
from dicmor.flows.glow import CouplingOnlyStep, Flow, GlowStep, StepType
from dicmor.flows.invconv import InvertibleConv1x1
from dicmor.flows.prior import ClassConditionalPrior, nll_bits_per_dim

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ClassConditionalPrior",
    "CouplingOnlyStep",
    "Flow",
    "GlowStep",
    "InvertibleConv1x1",
    "StepType",
    "nll_bits_per_dim",
]
