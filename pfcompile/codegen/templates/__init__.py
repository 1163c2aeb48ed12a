"""pfcompile's schedule templates, one module per op family. Tuning records
(data, per target) live in the repository's top-level ``schedules/<target>/``."""

from __future__ import annotations

from tvm import tirx

from pfcompile.codegen.templates.base import Hardware, Template, Workload
from pfcompile.codegen.templates.conv2d import Conv2dTemplate, ConvParams
from pfcompile.codegen.templates.dense import DenseParams, DenseTemplate
from pfcompile.codegen.templates.depthwise import DepthwiseParams, DepthwiseTemplate
from pfcompile.codegen.templates.dwpw import DwPwParams, DwPwTemplate
from pfcompile.codegen.templates.generic import GenericParams, GenericTemplate
from pfcompile.codegen.templates.matmul import MatmulParams, MatmulTemplate
from pfcompile.codegen.templates.norm import NormParams, NormTemplate
from pfcompile.codegen.templates.winograd import WinogradParams, WinogradTemplate

__all__ = [
    "TEMPLATES",
    "Conv2dTemplate",
    "ConvParams",
    "DenseParams",
    "DenseTemplate",
    "DepthwiseParams",
    "DepthwiseTemplate",
    "DwPwParams",
    "DwPwTemplate",
    "GenericParams",
    "GenericTemplate",
    "Hardware",
    "MatmulParams",
    "MatmulTemplate",
    "NormParams",
    "NormTemplate",
    "Template",
    "WinogradParams",
    "WinogradTemplate",
    "Workload",
    "match",
    "template_for",
]

#: tried in order (a fused depthwise + 1x1 kernel before either half's template); the
#: generic template takes whatever is left
TEMPLATES: tuple = (DwPwTemplate(), Conv2dTemplate(), WinogradTemplate(), DepthwiseTemplate(), MatmulTemplate(),
                    DenseTemplate(), NormTemplate(), GenericTemplate())


def match(func: tirx.PrimFunc):
    """(template, workload) for a PrimFunc, or (None, None)."""
    for t in TEMPLATES:
        wl = t.match(func)
        if wl is not None:
            return t, wl
    return None, None


def template_for(family: str):
    for t in TEMPLATES:
        if t.family == family or (family == "conv2d_1x1" and t.family == "conv2d"):
            return t
    if family in ("elementwise", "pool", "reduction", "group_conv"):
        return TEMPLATES[-1]
    raise KeyError(family)
