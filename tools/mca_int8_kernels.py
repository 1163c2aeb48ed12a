"""Static throughput of the integer kernels' inner loops with llvm-mca (no hardware needed).

For each template and a few MobileNetV2 / ResNet-18 layers it compiles the kernel for the
target, takes the innermost loop that holds the dot-product instruction out of the
assembly, runs ``llvm-mca -mcpu=CPU`` on it and reports the predicted cycles per loop
iteration and, from the kernel's register tile, the predicted cycles per output of that
loop (the multiply-accumulate work; the per-tile epilogue and the input pack are not
in it). These are llvm-mca's scheduling-model predictions, not measurements: no ARM
latency is claimed from them.

  python tools/mca_int8_kernels.py                      # arm64 (cortex-a72), arm64-dotprod (a76)
  python tools/mca_int8_kernels.py --isa avx2,vnni      # x86 (znver3 / icelake-server models)
  python tools/mca_int8_kernels.py --mca llvm-mca-19
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from dataclasses import replace

# isa: (pfcompile target, llvm-mca -mcpu, -mtriple, -mattr, MAC instruction, instructions
# per intrinsic call (8 output channels))
ISAS = {
    "neon": ("arm64", "cortex-a72", "aarch64", "+neon", "smlal", 2),
    "sdot": ("arm64-dotprod", "cortex-a76", "aarch64", "+neon,+dotprod", "sdot", 2),
    "avx2": ("host-avx2", "znver3", "x86_64", "", "vpmaddwd", 1),
    "vnni": ("host-vnni", "icelake-server", "x86_64", "", "vpdpbusd", 1),
}
B = "NCHW8c"
# (name, c, hw, oc, k, stride, groups)
LAYERS = [
    ("mbv2 expand 1x1 24->144 @56", 24, 56, 144, 1, 1, 1),
    ("mbv2 project 1x1 144->24 @56", 144, 56, 24, 1, 1, 1),
    ("mbv2 expand 1x1 96->576 @14", 96, 14, 576, 1, 1, 1),
    ("mbv2 dw 3x3 144 @56", 144, 56, 144, 3, 1, 144),
    ("mbv2 dw 3x3/2 96 @112", 96, 112, 96, 3, 2, 96),
    ("resnet 3x3 64->64 @56", 64, 56, 64, 3, 1, 1),
    ("resnet 3x3 256->256 @14", 256, 14, 256, 3, 1, 1),
]

_JUMP = re.compile(r"^\s+(?:j\w+|b\.\w+|b|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s+(\.LBB\w+)")


def inner_loop(asm: str, mnemonic: str) -> str:
    """The smallest label..backward-branch region of ``asm`` that contains ``mnemonic``."""
    lines = asm.splitlines()
    labels: dict[str, int] = {}
    best = None
    for i, line in enumerate(lines):
        m = re.match(r"^(\.LBB\w+):", line)
        if m:
            labels[m.group(1)] = i
        m = _JUMP.match(line)
        if m and m.group(1) in labels:
            s = labels[m.group(1)]
            body = lines[s:i + 1]
            if any(re.search(rf"\b{mnemonic}\b", b) for b in body) and (
                    best is None or i - s < best[1] - best[0]):
                best = (s, i)
    if best is None:
        raise RuntimeError(f"no loop with {mnemonic} in the kernel")
    keep = []
    for line in lines[best[0]:best[1] + 1]:
        t = line.strip()
        if not t or t.startswith((".loc", "#", "//", ".p2align", ".Ltmp")) or t.endswith(":"):
            continue
        keep.append(line)
    return "\n".join(keep) + "\n"


def analyse(isa_name: str, layer, mca: str, iterations: int = 200) -> dict:
    import tvm

    from pfcompile.quantexec import arm, with_int8_features, x86
    from pfcompile.quantexec.blocked import conv_func, default_tiles, depthwise_func
    from pfcompile.quantexec.kernels import QConvSpec
    from pfcompile.targets import load_target

    tname, cpu, triple, mattr, mac, per_call = ISAS[isa_name]
    isa = {"neon": arm.NEON, "sdot": arm.SDOT, "avx2": x86.AVX2, "vnni": x86.VNNI}[isa_name]
    name, c, hw, oc, k, s, g = layer
    sp = QConvSpec(1, c, hw, hw, oc, k, k, (s, s), (k // 2,) * 4, (1, 1), g, "uint8", "uint8",
                   3, 0, 0, 255, x_layout=B, y_layout=B)
    target = with_int8_features(load_target(tname))
    if g == 1:
        func = conv_func(sp, isa)
        flat = k == 1 and s == 1
        t_ow, t_oc = default_tiles(replace(sp, h=1, w=hw * hw) if flat else sp, isa)
        calls = (-(-c // isa.conv_kg)) * k * k * t_ow * t_oc
    else:
        func = depthwise_func(sp, isa)
        t_ow, t_oc = max(d for d in range(1, min(sp.ow, 8) + 1) if sp.ow % d == 0), 1
        calls = -(-k // isa.dw_kg) * k * t_ow
    ex = tvm.compile(tvm.IRModule({"main": func}), target=target.tvm_target())
    loop = inner_loop(ex.mod.inspect_source("asm"), mac)
    n_mac = len(re.findall(rf"\b{mac}2?\b", loop))
    cmd = [mca, f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={iterations}"]
    if mattr:
        cmd.append(f"-mattr={mattr}")
    out = subprocess.run(cmd, input=loop, capture_output=True, text=True, check=True).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / iterations
    iters_per_tile = calls * per_call / n_mac
    outputs = t_ow * t_oc * 8
    return {"layer": name, "isa": isa_name, "cpu": cpu, "tile": f"{t_ow}x{t_oc * 8}",
            "mac_per_iter": n_mac, "cycles_per_iter": cycles,
            "cycles_per_output": cycles * iters_per_tile / outputs,
            "macs_per_cycle": (c // g) * k * k * outputs / (cycles * iters_per_tile)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", default="neon,sdot")
    ap.add_argument("--mca", default="", help="llvm-mca binary (default: the newest on PATH)")
    args = ap.parse_args()
    mca = args.mca or next((m for m in ("llvm-mca-19", "llvm-mca-18", "llvm-mca-17",
                                        "llvm-mca-16", "llvm-mca") if shutil.which(m)), None)
    if mca is None:
        raise SystemExit("llvm-mca not found (Debian: apt-get install llvm)")
    version = subprocess.run([mca, "--version"], check=False, capture_output=True,
                             text=True).stdout
    line = next((v.strip() for v in version.splitlines() if "version" in v.lower()), "")
    print(f"llvm-mca: {mca} ({line}); predictions of its scheduling models, not measurements")
    print("| layer | isa | -mcpu | tile (px x oc) | MAC instr / iter | cycles / iter | "
          "cycles / output | MACs / cycle |")
    print("|---|---|---|---|---|---|---|---|")
    for isa in args.isa.split(","):
        for layer in LAYERS:
            r = analyse(isa, layer, mca)
            print(f"| {r['layer']} | {r['isa']} | {r['cpu']} | {r['tile']} | {r['mac_per_iter']} | "
                  f"{r['cycles_per_iter']:.1f} | {r['cycles_per_output']:.2f} | "
                  f"{r['macs_per_cycle']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
