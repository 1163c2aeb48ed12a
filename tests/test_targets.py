"""Targets as data: host detection on x86-64 and aarch64, the x86 variants, native ARM."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pfcompile import targets
from pfcompile.cli import app
from pfcompile.targets import host_hardware, host_mcpu, load_target

AVX2_EPYC = {"sse4_2", "avx", "avx2", "fma"}
VNNI_XEON = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def test_x86_detection_from_flags():
    assert host_mcpu("x86_64", AVX2_EPYC) == "x86-64-v3"
    assert host_mcpu("x86_64", VNNI_XEON) == "x86-64-v4"
    hw = host_hardware("x86_64", AVX2_EPYC)
    assert (hw["vector_bits"], hw["fp32_lanes"], hw["vector_registers"], hw["int8_dot"]) == \
        (256, 8, 16, "avx2")
    hw = host_hardware("x86_64", VNNI_XEON)
    assert (hw["vector_bits"], hw["fp32_lanes"], hw["int8_dot"]) == (512, 16, "avx512-vnni")
    assert host_hardware("x86_64", AVX2_EPYC | {"avx_vnni"})["int8_dot"] == "avx-vnni"


def test_aarch64_detection_from_flags():
    hw = host_hardware("aarch64", {"fp", "asimd", "asimddp", "sve"})
    assert hw["int8_dot"] == "sdot" and hw["fp32_lanes"] == 4 and hw["vector_registers"] == 32
    assert hw["mattr"] == ["+neon", "+dotprod", "+sve"]
    assert host_hardware("aarch64", {"fp", "asimd"})["int8_dot"] == "neon"
    assert host_mcpu("aarch64", {"asimd"}) == "generic"


def test_host_on_an_aarch64_machine_is_arm_and_arm64_runs_natively(monkeypatch):
    monkeypatch.setattr(targets, "host_arch", lambda: "aarch64")
    monkeypatch.setattr(targets, "cpu_flags", lambda: {"fp", "asimd", "asimddp"})
    host = load_target("host")
    assert host.arch == "aarch64" and host.hardware["int8_dot"] == "sdot"
    assert host.tvm["mtriple"] == "aarch64-linux-gnu" and "+dotprod" in host.tvm["mattr"]
    assert "aarch64" in host.description and "sdot" in host.description
    arm = load_target("arm64")
    assert not arm.emulated and arm.serve == "local" and arm.cross_compiler == "" and arm.is_host


def test_on_x86_arm64_stays_emulated_and_cross_compiled(monkeypatch):
    monkeypatch.setattr(targets, "host_arch", lambda: "x86_64")
    arm = load_target("arm64")
    assert arm.emulated and arm.serve == "qemu" and arm.cross_compiler == "aarch64-linux-gnu-g++"


@pytest.mark.parametrize(("flags", "missing"), [
    (VNNI_XEON, []), (AVX2_EPYC, ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"])])
def test_x86_variants_pin_their_instruction_set(monkeypatch, flags, missing):
    monkeypatch.setattr(targets, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(targets, "cpu_flags", lambda: flags)
    avx2, vnni = load_target("host-avx2"), load_target("host-vnni")
    assert avx2.tvm["mcpu"] == "x86-64-v3" and avx2.hardware["int8_dot"] == "avx2"
    assert avx2.hardware["fp32_lanes"] == 8 and avx2.missing_cpu_features() == []
    assert vnni.hardware["int8_dot"] == "avx512-vnni"
    assert vnni.missing_cpu_features() == missing
    assert "requires" not in vnni.hardware


def test_host_description_says_what_was_detected(monkeypatch):
    monkeypatch.setattr(targets, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(targets, "cpu_flags", lambda: AVX2_EPYC)
    host = load_target("host")
    assert host.tvm["mcpu"] == "x86-64-v3" and host.hardware["int8_dot"] == "avx2"
    assert "AVX2" in host.description and "avx2" in host.description
    assert "AVX-512" not in host.description


def test_targets_command_lists_the_variants_and_detection():
    res = CliRunner().invoke(app, ["targets"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("host", "host-avx2", "host-vnni", "arm64"):
        assert name in res.output
    assert f"int8 by {load_target('host').hardware['int8_dot']}" in res.output
