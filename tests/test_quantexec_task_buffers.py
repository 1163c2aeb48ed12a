"""The integer templates allocate no per-task buffers besides their input staging: the tensor
intrinsics bind no names (a name bound in a TVMScript intrinsic became a buffer that TVM
allocated with ``TVMBackendAllocWorkspace`` in every parallel task), and on x86 the register
tile's accumulators are on the stack (``Isa.acc_scope``). The AVX2 kernels take the
two-stage epilogue (``requant_q`` then ``requant``); VNNI not. Compile only (LLVM IR)."""

import re
from types import SimpleNamespace

import pytest
import tvm

from pfcompile.codegen.pipeline import build_context
from pfcompile.quantexec import arm, x86
from pfcompile.quantexec.kernels import QConvSpec

B = "NCHW8c"
X86 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"],
                          "num-cores": 2})
ARM = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                         "mattr": ["+neon", "+dotprod"], "num-cores": 4})


def _spec(c, hw, oc, k, groups):
    return QConvSpec(1, c, hw, hw, oc, k, k, (1, 1), (k // 2,) * 4, (1, 1), groups, "uint8",
                     "uint8", 3, 0, 0, 255, x_layout=B, y_layout=B, shared_params=True)


def _workspaces(func, target) -> list[str]:
    """Names of the buffers the compiled function gets from TVMBackendAllocWorkspace."""
    with build_context():
        ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=target)
    ll = ex.mod.inspect_source("ll")
    assert "TVMBackendAllocWorkspace" in ll or "pack" not in ll
    return sorted(set(re.findall(r"%([A-Za-z_][\w.]*) = tail call ptr %\d+\(i32 1, i32 %dev_id", ll)))


def _blocks(func) -> set[str]:
    return set(re.findall(r'T\.sblock\("(\w+)"', func.script()))


@pytest.mark.parametrize("kind", ["avx2", "vnni"])
def test_x86_conv_and_depthwise_allocate_staging_only(kind):
    tgt = X86 if kind == "avx2" else VNNI
    # what kernel selection reads of a pfcompile target: its TVM target's mattr
    sel = SimpleNamespace(tvm={"mattr": ["+avx512vnni"]}) if kind == "vnni" else None
    conv = x86.avx2_conv_kernel(_spec(16, 14, 32, 1, 1), sel)
    dw = x86.x86_depthwise_kernel(_spec(16, 56, 16, 3, 16), sel)
    assert conv.name == ("x86-vnni-vpdpbusd" if kind == "vnni" else "x86-avx2-pmaddwd")
    assert dw.name == ("x86-vnni-dw-vpdpbusd" if kind == "vnni" else "x86-avx2-dw-pmaddwd")
    # AVX2 widens the uint8 input to int16 once ("pack"); VNNI reads a blocked one in place
    assert _workspaces(conv.func, tgt) == (["pack"] if kind == "avx2" else [])
    assert set(_workspaces(dw.func, tgt)) <= {"pad"}  # the padded rows of a task (or on the stack)
    for k in (conv, dw):
        assert ("requant_q" in _blocks(k.func)) == (kind == "avx2")


def test_arm_sdot_intrinsics_bind_no_buffers():
    conv = arm.arm_conv_kernel(_spec(16, 14, 32, 1, 1), "sdot")
    dw = arm.arm_depthwise_kernel(_spec(16, 56, 16, 3, 16), "sdot")
    # int8 staging (uint8 - 128) and the accumulators (AArch64 keeps "local" scope)
    assert _workspaces(conv.func, ARM) == ["acc_local", "pack"]
    assert set(_workspaces(dw.func, ARM)) <= {"acc_local", "pad"}
