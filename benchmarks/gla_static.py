"""Static estimate from compiled code, no GPU: the chunked GLA Triton kernels read from their sm_90 SASS.

    .venv/bin/python -m benchmarks.gla_static [--shapes 8x2048,2x8192,1x32768] [--g-dtype bf16|fp32]
                                              [--paths fast,blocked,exact] [--gate key|head] [--out PATH]

Each kernel is compiled for sm_90 (and sm_80 for registers and spills) through the real host wrappers
(``benchmarks/lib/sm90_harness.py``: a stand-in driver, compile instead of launch, meta tensors; ``chunk_gla``
forward and backward at H16 K128 V128 bf16). For each launch the script reads the SASS (``nvdisasm -g``:
instructions with their source lines) and counts what one warp executes:

* loops are the backward branches of the SASS; each is matched to the Python ``for`` of the kernel source that holds
  most of its instructions' source lines, and runs that loop's trip count, evaluated from the launch's arguments
  (``range(N)``, ``range(tl.cdiv(K, BK))``...). Code outside loops runs once.
* ``--gate head``: one gate per head (``g`` [B, T, H], the scalar-gate kernels of ``chunk_scalar_triton.py``). They
  have no data-dependent branch (the in-chunk decay matrix is exact for any decay rate), so one "scalar" path, the
  same estimate for any gate values (e.g. a Mamba-2 head decaying 3-8 nats a step, where the per-key kernels given
  that gate over K take the "exact" path).
* data-dependent branches: the kernels choose per chunk between one reference row and per-block references (the
  gate's decay inside the chunk); ``--paths`` says which side runs (``cold_lines``): "fast" (the GLA layer's gates),
  "blocked" / "exact" (every chunk on per-block references, the diagonal blocks in the dot / pair by pair: the
  worst case). Both sides of every other forward branch count.
* instructions are grouped by the unit that executes them (H100/H200, per SM sub-partition, i.e. per scheduler):
  every instruction takes one issue slot; FP32 FFMA/FMUL/FADD 1 cycle per warp (32 lanes), IMAD 2 (the heavy FMA
  half only), integer/logic/compare/select/move 2 (16 lanes), MUFU and conversions F2F/I2F/F2I 8 (16 per SM),
  SHFL 4; shared memory (LDS/STS/LDSM/STSM) 128 B per SM cycle; HGMMA 2,048 bf16 MACs per SM cycle (tf32 half).
* a program's time on an SM is the largest of: its per-scheduler cycles (issue or the busiest unit, warps spread
  over the 4 schedulers), its shared-memory cycles, its tensor-core cycles. A kernel's issue time is
  ``ceil(programs / 132) x program time`` (co-resident programs share the SM; the tail wave is rounded up), at the
  SM clock (``--clock``, default 1.755 GHz, the H200's sustained clock under load; boost is 1.98 GHz).
* memory time: the bytes each kernel must move between DRAM and the SMs (its tensors, times the number of programs
  that reread each tile: ``TRAFFIC`` below) at ``--bandwidth`` (default 4.3 TB/s, what an H200 sustains).
* a kernel's estimate is ``max(memory time, issue time) + 2 us`` launch gap. The sequential state kernels also get a
  latency floor: per chunk step at least ``--step-latency`` cycles (default 1,000: a wgmma chain, the state update
  and a global store; pipelined loads hide DRAM latency, unpipelined ones add ``--dram-latency``), per program,
  ``ceil(programs / (132 x blocks per SM))`` waves.

This is a model, not a measurement: perfect issue is a lower bound (at 2 warps per scheduler the issue rate falls
short of one per cycle; the "latency-adjusted" column divides the issue time by ``min(1, resident warps per
scheduler / 4)``), and it ignores L2 hits, DRAM efficiency and clock changes. Per kernel it prints: hot loop
(iterations x instructions per iteration, barriers, MUFU), registers, shared memory, blocks per SM, bytes, times.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.lib import sm90_harness as H

ROOT = Path(__file__).resolve().parents[1]
SMS = 132
SCHEDULERS = 4
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED = 1024  # per block
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32

# -- SASS ------------------------------------------------------------------------------------------------------------
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\(\.(L_x_\d+)\)")


def parse_sass(text: str) -> list[dict]:
    """Instructions of one kernel: address, predicate, opcode (with modifiers), operands, source file and line,
    branch target label; plus the address of every label."""
    out, labels, src = [], {}, (None, None)
    pending = []
    for ln in text.splitlines():
        m = _LINE.search(ln)
        if m:
            src = (m.group(1), int(m.group(2)))
            continue
        s = ln.strip()
        if re.fullmatch(r"\.L_x_\d+:", s):
            pending.append(s[1:-1])
            continue
        m = _INSTR.search(ln)
        if not m:
            continue
        addr, body = int(m.group(1), 16), m.group(2).strip()
        for lab in pending:
            labels[lab] = addr
        pending = []
        pred = None
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        op, _, operands = body.partition(" ")
        t = _TARGET.search(operands)
        out.append(
            dict(
                addr=addr,
                pred=pred,
                op=op,
                operands=operands,
                file=src[0],
                line=src[1],
                target=t.group(1) if t else None,
            )
        )
    for ins in out:
        if ins["target"] is not None:
            ins["target_addr"] = labels[ins["target"]]
    return out


def blocks(instrs: list[dict]) -> list[dict]:
    """Basic blocks (``first``/``last`` instruction index) and their successors. ``BRA.DIV`` (taken only by a
    diverged warp, which these kernels never are) and ``@!PT`` (never) do not branch."""
    index = {ins["addr"]: i for i, ins in enumerate(instrs)}
    leaders = {0}
    for i, ins in enumerate(instrs):
        if ins["op"].startswith(("BRA", "EXIT", "RET")):
            leaders.add(i + 1)
            if "target_addr" in ins:
                leaders.add(index[ins["target_addr"]])
    starts = sorted(x for x in leaders if x < len(instrs))
    out = []
    for n, first in enumerate(starts):
        last = (starts[n + 1] if n + 1 < len(starts) else len(instrs)) - 1
        ins = instrs[last]
        taken = ins["pred"] != "@!PT"
        always = ins["pred"] in (None, "@PT")
        succ = []
        if ins["op"].startswith("BRA") and not ins["op"].startswith("BRA.DIV") and taken and "target_addr" in ins:
            succ.append(index[ins["target_addr"]])
        branch = ins["op"].startswith("BRA") and not ins["op"].startswith("BRA.DIV")
        ends = ins["op"].startswith(("EXIT", "RET")) or branch
        if not (ends and always and taken):
            succ.append(last + 1)
        out.append(dict(first=first, last=last, succ=[x for x in succ if x < len(instrs)]))
    return out


def hot_instructions(instrs: list[dict], cold_lines: set) -> list[dict]:
    """The instructions that run: the blocks reachable from the entry without entering a block whose instructions
    mostly come from ``cold_lines`` ((file, line) pairs: the branch not taken); ``@!PT`` no-ops dropped."""
    bl = blocks(instrs)
    by_first = {b["first"]: b for b in bl}

    def cold(b):
        lines = [(i["file"], i["line"]) for i in instrs[b["first"] : b["last"] + 1] if i["file"]]
        return bool(lines) and sum(x in cold_lines for x in lines) * 2 > len(lines)

    seen, todo = set(), [0]
    while todo:
        f = todo.pop()
        if f in seen or cold(by_first[f]):
            continue
        seen.add(f)
        todo.extend(by_first[f]["succ"])
    hot = [i for f in sorted(seen) for i in instrs[by_first[f]["first"] : by_first[f]["last"] + 1]]
    if not any(i["op"].startswith("EXIT") for i in hot):
        raise ValueError("no EXIT left on the hot path: the cold-line marking cut the kernel off")
    return [i for i in hot if i["pred"] != "@!PT"]


def cold_lines(path: str, kernel: str, mode: str) -> set:
    """Source lines of the branches not taken. The kernels branch on the in-chunk gate decay: ``if ... <= LIMIT``
    or ``if fast`` (one reference row), else the chunk is flagged ``slow`` and ``if slow ...`` (per-block
    references) runs in the slow kernels; there ``if not diag_ok`` sums the diagonal blocks pair by pair.
    ``mode``: "fast" (typical gates: the LIMIT/fast branches run, the slow ones not), "blocked" (every chunk slow,
    the diagonal blocks in the dot), "exact" (every chunk slow, the diagonal blocks pair by pair). Both sides of
    any other branch count; so do the functions called from taken branches only."""
    if mode not in ("fast", "blocked", "exact"):
        raise ValueError(mode)
    tree = ast.parse(Path(path).read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    if kernel not in funcs:  # another file (triton's own language functions): nothing in it is cold
        return set()
    cold = []
    for f in funcs.values():
        for node in ast.walk(f):
            if not isinstance(node, ast.If):
                continue
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            if names & {"LIMIT", "fast"}:
                cold += node.orelse if mode == "fast" else node.body
            elif "slow" in names:
                cold += node.body if mode == "fast" else node.orelse
            elif "diag_ok" in names and mode == "blocked":
                cold += node.body
    ranges = [(st.lineno, st.end_lineno) for st in cold]

    def in_cold(line):
        return any(a <= line <= b for a, b in ranges)

    hot_funcs, todo = set(), [kernel]
    while todo:
        name = todo.pop()
        if name in hot_funcs or name not in funcs:
            continue
        hot_funcs.add(name)
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not in_cold(node.lineno):
                todo.append(node.func.id)
    lines = {ln for a, b in ranges for ln in range(a, b + 1)}
    for name, f in funcs.items():
        if name not in hot_funcs:
            lines |= set(range(f.lineno, f.end_lineno + 1))
    return {(path, ln) for ln in lines}


def find_loops(instrs: list[dict]) -> list[dict]:
    """Loops: backward branches; each covers the address range [target, branch]. Sorted outermost first."""
    loops = [
        dict(start=ins["target_addr"], end=ins["addr"])
        for ins in instrs
        if ins["op"].startswith("BRA") and ins.get("target_addr", 1 << 62) <= ins["addr"]
    ]
    loops.sort(key=lambda lp: (lp["start"], -lp["end"]))
    for lp in loops:
        lp["parents"] = [o for o in loops if o is not lp and o["start"] <= lp["start"] and lp["end"] <= o["end"]]
        lp["depth"] = len(lp["parents"])
    return loops


def _inside(outer, inner) -> bool:
    """``inner`` is nested in ``outer``."""
    return any(p is outer for p in inner["parents"])


# -- trip counts from the kernel source ------------------------------------------------------------------------------
class _Tl:
    @staticmethod
    def cdiv(a, b):
        return -(-a // b)


def _for_nodes(path: str) -> list[ast.For]:
    """Loops of a source file that stay loops in the compiled code (``tl.static_range`` is unrolled)."""
    tree = ast.parse(Path(path).read_text())
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.While) or (isinstance(n, ast.For) and "static_range" not in ast.unparse(n.iter))
    ]


def _innermost_for(fors, line):
    inside = [n for n in fors if n.lineno <= line <= n.end_lineno]
    return max(inside, key=lambda n: n.lineno) if inside else None


def trip_count(node, args: dict) -> int:
    if isinstance(node, ast.While):
        raise ValueError(f"line {node.lineno}: a while loop: its trip count is not in the source")
    call = node.iter
    if not (isinstance(call, ast.Call) and ast.unparse(call.func) in ("range", "tl.range")):
        raise ValueError(f"line {node.lineno}: cannot count `{ast.unparse(call)}`")
    ns = dict(args, tl=_Tl, triton=_Tl)
    vals = [eval(compile(ast.Expression(a), "<trip>", "eval"), {}, ns) for a in call.args]  # noqa: S307
    return len(range(*[int(v) for v in vals]))


def assign_trips(instrs, loops, args):
    """Each SASS loop gets the trip count of the Python loop holding most of its own (not nested) instructions."""
    fors_by_file = {}
    for lp in loops:
        votes = Counter()
        for ins in instrs:
            if not lp["start"] <= ins["addr"] <= lp["end"] or ins["file"] is None:
                continue
            if any(o is not lp and _inside(lp, o) and o["start"] <= ins["addr"] <= o["end"] for o in loops):
                continue  # in a nested loop
            fors = fors_by_file.setdefault(ins["file"], _for_nodes(ins["file"]))
            node = _innermost_for(fors, ins["line"])
            if node is not None:
                votes[(ins["file"], node.lineno)] += 1
        if not votes:
            raise ValueError(f"SASS loop at {lp['start']:#x}: no instruction inside a Python loop")
        (file, lineno), _ = votes.most_common(1)[0]
        node = next(n for n in fors_by_file[file] if n.lineno == lineno)
        lp["source"] = f"{Path(file).name}:{lineno}"
        lp["trips"] = trip_count(node, args)
        lp["source_text"] = ast.unparse(node.iter)
    return loops


# -- instruction classes and the cost model ---------------------------------------------------------------------------
def op_class(op: str) -> str:
    base = op.split(".")[0]
    if base in ("FFMA", "FMUL", "FADD", "FMUL2", "FFMA2", "FADD2", "HFMA2", "HMUL2", "HADD2", "FSWZADD"):
        return "fma"
    if base in ("IMAD", "IMUL", "IDP", "IMADSP"):
        return "imad"
    if base in ("MUFU", "F2F", "F2I", "I2F", "FRND", "POPC", "FLO", "BREV"):
        return "xu"
    if base == "SHFL":
        return "shfl"
    if base in ("LDS", "STS", "LDSM", "STSM", "ATOMS"):
        return "smem"
    if base in ("LDG", "STG", "LDGSTS", "RED", "ATOMG", "ATOM", "LD", "ST"):
        return "global"
    if base in ("HGMMA", "HMMA", "IMMA", "UTMALDG", "UTMASTG"):
        return "tensor"
    if base in ("BAR",):
        return "bar"
    if base.startswith("U") or base in ("S2UR", "R2UR", "LDC", "ULDC"):
        return "uniform"
    if base in (
        "BRA",
        "EXIT",
        "BSSY",
        "BSYNC",
        "WARPSYNC",
        "NOP",
        "DEPBAR",
        "LDGDEPBAR",
        "MEMBAR",
        "FENCE",
        "WARPGROUP",
        "ERRBAR",
        "CCTL",
        "YIELD",
        "CALL",
        "RET",
        "BPT",
    ):
        return "control"
    return "alu"  # IADD3 LOP3 ISETP FSETP FSEL SEL SHF LEA PRMT MOV CS2R PLOP3 F2FP VIADD IMNMX FMNMX ...


def _width_bytes(op: str) -> int:
    m = re.search(r"\.(128|64|U16|S16|U8|S8|32)(?:\.|$)", op)
    if not m:
        return 4
    return {"128": 16, "64": 8, "32": 4, "U16": 2, "S16": 2, "U8": 1, "S8": 1}[m.group(1)]


def smem_bytes(op: str) -> int:
    """Bytes one warp moves through shared memory with ``op``."""
    if op.startswith(("LDSM", "STSM")):
        n = re.search(r"\.x?(\d)\b|\.M88\.(\d)", op)
        mats = int(next(g for g in n.groups() if g)) if n else 1
        return 128 * mats  # one 8x8 16-bit matrix per .x
    return 32 * _width_bytes(op)


def mma_macs(op: str) -> tuple[int, bool]:
    """(multiply-accumulates of one HGMMA (per warpgroup) or HMMA (per warp), tf32 operands?)"""
    m = re.search(r"(\d+)x(\d+)x(\d+)", op)
    if op.startswith("HGMMA") and m:
        return math.prod(int(x) for x in m.groups()), "TF32" in op
    if op.startswith("HMMA"):
        shape = op.split(".")[1]
        return {"16816": 16 * 8 * 16, "1688": 16 * 8 * 8, "884": 8 * 8 * 4}.get(shape, 16 * 8 * 16), "TF32" in op
    return 0, False


def count(instrs, loops):
    """Per-warp executed instruction counts by class, and the hot (most executed) innermost loop."""
    mult = {}
    for ins in instrs:
        m = 1
        for lp in loops:
            if lp["start"] <= ins["addr"] <= lp["end"]:
                m *= lp["trips"]
        mult[ins["addr"]] = m
    c = Counter()
    for ins in instrs:
        m = mult[ins["addr"]]
        cls = op_class(ins["op"])
        c["instr"] += m
        c[cls] += m
        if ins["op"].startswith("MUFU"):
            c["mufu"] += m
        if cls == "smem":
            c["smem_bytes"] += m * smem_bytes(ins["op"])
        if cls == "global":
            c["global_bytes"] += m * 32 * _width_bytes(ins["op"])
        if cls == "tensor":
            macs, tf32 = mma_macs(ins["op"])
            c["mma_macs" if not tf32 else "mma_macs_tf32"] += m * macs
            c["mma_instr"] += m
    hot = None
    inner = [lp for lp in loops if not any(o is not lp and _inside(lp, o) for o in loops)]
    for lp in inner:
        body = [ins for ins in instrs if lp["start"] <= ins["addr"] <= lp["end"]]
        total = math.prod(o["trips"] for o in lp["parents"]) * lp["trips"] * len(body)
        if hot is None or total > hot["executed"]:
            hot = dict(
                source=lp["source"],
                range=lp["source_text"],
                trips=lp["trips"],
                body=len(body),
                bar=sum(op_class(i["op"]) == "bar" for i in body),
                mufu=sum(i["op"].startswith("MUFU") for i in body),
                shfl=sum(op_class(i["op"]) == "shfl" for i in body),
                executed=total,
            )
    return c, hot


def scheduler_cycles(c, warps: int) -> dict:
    """Cycles one program keeps each scheduler busy (warps spread evenly over the 4), per bound."""
    per = warps / SCHEDULERS
    fma = max(2 * c["imad"], c["fma"] + c["imad"])
    return dict(
        issue=per * c["instr"], fma=per * fma, alu=per * 2 * c["alu"], xu=per * 8 * c["xu"], shfl=per * 4 * c["shfl"]
    )


def program_cycles(c, warps: int, arch: int = 90) -> dict:
    sched = scheduler_cycles(c, warps)
    groups = warps / 4 if arch == 90 else warps  # HGMMA counts per warpgroup, HMMA per warp
    rate = 2048 if arch == 90 else 1024  # bf16 MACs per SM per cycle (H100/H200; A100)
    tensor = groups * (c["mma_macs"] / rate + c["mma_macs_tf32"] / (rate / 2))
    cyc = dict(sched, smem=warps * c["smem_bytes"] / 128, tensor=tensor)
    cyc["program"] = max(cyc.values())
    cyc["bound"] = max((k for k in cyc if k != "program"), key=cyc.get)
    return cyc


def blocks_per_sm(regs: int, warps: int, smem: int) -> int:
    warp_regs = math.ceil(regs * 32 / 256) * 256
    by_regs = (REGS_PER_SM // warp_regs) // warps
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED) if smem else MAX_BLOCKS_PER_SM
    return max(0, min(by_regs, by_smem, MAX_WARPS_PER_SM // warps, MAX_BLOCKS_PER_SM))


# -- bytes each kernel moves (DRAM <-> SMs) ----------------------------------------------------------------------------
# kernel -> {tensor argument: how many times it is read or written, as an expression of the grid (g0, g1, g2) and
# the launch's constexprs}: a tensor that every program along grid axis 1 reads in full counts g1 times. Written
# tensors count once. Rereads are counted as DRAM traffic (the programs sharing a tile are not launched together).
TRAFFIC: dict[str, dict[str, str]] = {
    "_state_fwd_kernel": {"k": "g1", "v": "g2", "g": "g1", "gc": "g1", "h": "1", "h0": "1", "ht": "1"},
    "_output_kernel": {"q": "1", "k": "1", "g": "1", "h": "1", "v": "fast", "o": "fast", "A": "fast", "flags": "1"},
    "_output_slow_kernel": {n: "1 - fast" for n in ("q", "k", "v", "g", "h", "o", "A")} | {"flags": "1"},
    "_state_bwd_kernel": {"q": "g1", "do": "g2", "g": "g1", "gc": "g1", "dh": "1", "dht": "1", "dh0": "1"},
    # dv and the carry always; dq, dk, dg (and what only they need) in fast chunks
    "_bwd_kernel": {
        "k": "1",
        "g": "1",
        "dh": "1",
        "do": "1",
        "A": "1",
        "dv": "1",
        "carry": "1",
        "h": "1",
        "q": "fast",
        "v": "fast",
        "dq": "fast",
        "dk": "fast",
        "dg": "fast",
        "flags": "1",
    },
    "_bwd_slow_kernel": {n: "1 - fast" for n in ("q", "k", "v", "g", "h", "dh", "do", "dq", "dk", "dg", "carry")}
    | {"flags": "1"},
    # the scalar-gate kernels (a gate per head; every chunk alike). The backward kernel's two K passes read q, k, dh
    # twice and h twice (h_{n+1}, then h_n): counted as DRAM rereads, though the second reads are recent (L2)
    "_scalar_state_fwd_kernel": {"k": "g1", "v": "g2", "g": "g1 * g2", "h": "1", "h0": "1", "ht": "1"},
    "_scalar_output_kernel": {n: "1" for n in ("q", "k", "v", "g", "h", "o")},
    "_scalar_state_bwd_kernel": {"q": "g1", "do": "g2", "g": "g1 * g2", "dh": "1", "dht": "1", "dh0": "1"},
    "_scalar_bwd_kernel": {"q": "2", "k": "2", "h": "2", "dh": "2"}
    | {n: "1" for n in ("v", "g", "do", "dq", "dk", "dv", "dg")},
    # the kernels before the restructuring (commit 08144ae), for the before/after comparison
    "_cumsum_kernel": {"g": "1", "gc": "1"},
    "_output_kernel@08144ae": {"q": "g2", "k": "g2", "v": "1", "gc": "g2", "h": "1", "o": "1"},
    "_dv_kernel": {"q": "g2", "k": "g2", "gc": "g2", "do": "1", "dh": "1", "dv": "1"},
    "_dqkg_kernel": {
        "q": "1",
        "k": "1",
        "v": "g2",
        "gc": "1",
        "do": "g2",
        "h": "1",
        "dh": "1",
        "dq": "1",
        "dk": "1",
        "dg": "1",
    },
}


def traffic_bytes(kernel: str, tensors: dict, grid, args, path: str = "fast") -> tuple[int, dict]:
    spec = TRAFFIC.get(kernel)
    if kernel == "_output_kernel" and "gc" in tensors:  # the kernel before the restructuring
        spec = TRAFFIC["_output_kernel@08144ae"]
    if spec is None:
        raise KeyError(f"{kernel}: no entry in TRAFFIC (which tensors it reads and writes, and how often)")
    unknown = set(tensors) - set(spec)
    if unknown:
        raise KeyError(f"{kernel}: tensor arguments {sorted(unknown)} missing from TRAFFIC")
    ns = dict(
        args,
        g0=grid[0],
        g1=grid[1] if len(grid) > 1 else 1,
        g2=grid[2] if len(grid) > 2 else 1,
        fast=int(path == "fast"),
    )
    per = {name: int(eval(spec[name], {}, ns) * nbytes) for name, nbytes in tensors.items()}  # noqa: S307
    return sum(per.values()), per


# -- compile and collect ---------------------------------------------------------------------------------------------
class KeepingRecorder(H.Recorder):
    """The harness's recorder, also keeping each launch's cubin, arguments (scalars, constexprs, tensor sizes) and
    grid, in launch order."""

    def __init__(self, cuobjdump):
        super().__init__(cuobjdump)
        self.launches = []

    def launched(self, fn, kernel, args, kwargs, grid, arch, wall, cpu):
        super().launched(fn, kernel, args, kwargs, grid, arch, wall, cpu)
        names = {p.name for p in fn.params}
        bound = fn.signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in names})
        bound.apply_defaults()
        scalars, tensors = {}, {}
        for name, v in bound.arguments.items():
            if hasattr(v, "element_size"):
                tensors[name] = v.numel() * v.element_size()
            elif v is None:
                continue
            else:
                scalars[name] = getattr(v, "value", v)
        key = f"{fn.__name__}@sm_{arch}:{kernel.hash[:16]}"
        self.launches.append(
            dict(
                kernel=fn.__name__,
                arch=arch,
                key=key,
                grid=list(grid),
                args=scalars,
                tensors=tensors,
                cubin=kernel.asm["cubin"],
                warps=kernel.metadata.num_warps,
                stages=kernel.metadata.num_stages,
            )
        )


def gla_run(B, T, H_, K, V, dtype, g_dtype, scalar_gate=False):
    return H.gla_case("chunk", B, T, H_, K, V, dtype, g_dtype, scalar_gate=scalar_gate)


def sass_of(cubin: bytes, nvdisasm: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([nvdisasm, "-c", "-g", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def analyse(launch: dict, variant: dict, nvdisasm: str, sass_dir: Path | None = None, path: str = "fast") -> dict:
    text = sass_of(launch["cubin"], nvdisasm)
    if sass_dir is not None:
        (sass_dir / f"{launch['kernel']}_sm{launch['arch']}.sass").write_text(text)
    instrs = parse_sass(text)
    files = {i["file"] for i in instrs if i["file"]}
    cold = set().union(*(cold_lines(f, launch["kernel"], path) for f in files))
    instrs = hot_instructions(instrs, cold)
    loops = assign_trips(instrs, find_loops(instrs), launch["args"])
    c, hot = count(instrs, loops)
    cyc = program_cycles(c, launch["warps"], launch["arch"])
    programs = math.prod(launch["grid"])
    blocks = blocks_per_sm(variant["registers"], launch["warps"], variant["shared"])
    dram, per_tensor = traffic_bytes(launch["kernel"], launch["tensors"], launch["grid"], launch["args"], path)
    return dict(
        kernel=launch["kernel"],
        grid=launch["grid"],
        programs=programs,
        warps=launch["warps"],
        stages=launch["stages"],
        registers=variant["registers"],
        spill=variant["stack"],
        shared=variant["shared"],
        blocks_per_sm=blocks,
        static_instr=len(instrs),
        loops=[
            dict(
                source=lp["source"],
                range=lp["source_text"],
                trips=lp["trips"],
                depth=lp["depth"],
                body=sum(lp["start"] <= i["addr"] <= lp["end"] for i in instrs),
            )
            for lp in loops
        ],
        hot=hot,
        counts=dict(c),
        cycles=cyc,
        dram_bytes=dram,
        dram_by_tensor=per_tensor,
        chunk_steps=max([lp["trips"] for lp in loops if "N" in re.findall(r"\w+", lp["source_text"])], default=0),
        prefetched=all(
            any(i["op"].startswith("LDGSTS") for i in _in_loop(instrs, lp))
            or not any(i["op"].startswith("LDG") for i in _in_loop(instrs, lp))
            for lp in loops
        ),
    )


def _in_loop(instrs, lp):
    return [i for i in instrs if lp["start"] <= i["addr"] <= lp["end"]]


def estimate(k: dict, clock_hz: float, bandwidth: float, launch_us: float, step_latency: int, dram_latency: int):
    waves = math.ceil(k["programs"] / SMS)
    issue_s = waves * k["cycles"]["program"] / clock_hz
    resident_warps = max(1, k["blocks_per_sm"]) * k["warps"] / SCHEDULERS
    # programs on an SM at once: at most blocks_per_sm, at most the programs that land there
    occupancy = min(max(1, k["blocks_per_sm"]), math.ceil(k["programs"] / SMS))
    eff = min(1.0, occupancy * k["warps"] / SCHEDULERS / 4)
    mem_s = k["dram_bytes"] / bandwidth
    out = dict(
        waves=waves,
        issue_us=issue_s * 1e6,
        mem_us=mem_s * 1e6,
        resident_warps_per_scheduler=resident_warps,
        issue_efficiency=eff,
    )
    floor_s = 0.0
    if k["chunk_steps"]:  # a program walks the chunks in order: a dependent chain of steps
        per_step = step_latency + (0 if k["prefetched"] else dram_latency)
        seq_waves = math.ceil(k["programs"] / (SMS * max(1, k["blocks_per_sm"])))
        floor_s = seq_waves * k["chunk_steps"] * per_step / clock_hz
    out["latency_floor_us"] = floor_s * 1e6
    out["bound_us"] = max(mem_s, issue_s, floor_s) * 1e6 + launch_us
    out["adjusted_us"] = max(mem_s, issue_s / eff, floor_s) * 1e6 + launch_us
    return out


def compile_launches(shapes, dtype, g_dtype, archs, scalar_gate=False):
    ptxas, cuobjdump = H.find_tools()
    if ptxas is None or cuobjdump is None:
        raise RuntimeError(f"ptxas ({ptxas}) or cuobjdump ({cuobjdump}) not found")
    rec = KeepingRecorder(cuobjdump)
    tmp = tempfile.mkdtemp(prefix="gla_static_cache_")
    os.environ["TRITON_CACHE_DIR"] = tmp
    by_shape = {}
    with H.compile_only(rec) as stand_in:
        for arch in archs:
            stand_in.use(arch)
            for B, T in shapes:
                first = len(rec.launches)
                rec.case = f"B{B}T{T}@sm_{arch}"
                gla_run(B, T, 16, 128, 128, dtype, g_dtype, scalar_gate)()
                by_shape[(B, T, arch)] = rec.launches[first:]
    variants = {key: __import__("dataclasses").asdict(v) for key, v in rec.variants.items()}
    return by_shape, variants, cuobjdump


FLA_MS = {(8, 2048): 3.05, (2, 8192): 3.43, (1, 32768): 7.97}  # fla chunk_gla fwd+bwd, H200, bf16 (ANCHORS.md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="8x2048,2x8192,1x32768", help="BxT, comma-separated (H16 K128 V128)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument(
        "--g-dtype", default="bf16", choices=["bf16", "fp32"], help="the gate's dtype (fla was timed with a bf16 gate)"
    )
    p.add_argument(
        "--paths",
        default="fast,blocked,exact",
        help="which side of the gate-decay branches runs: fast "
        "(typical gates), blocked / exact (every chunk on per-block references, the diagonal blocks in "
        "the dot / pair by pair); see cold_lines",
    )
    p.add_argument(
        "--gate",
        default="key",
        choices=["key", "head"],
        help="a gate per key (g [B, T, H, K]) or per head (g [B, T, H], the scalar-gate kernels: one path, 'scalar')",
    )
    p.add_argument("--arch", default="90,80", help="90 for the estimate; 80 adds its registers and spills")
    p.add_argument("--clock", type=float, default=1.755e9, help="SM clock, Hz")
    p.add_argument("--bandwidth", type=float, default=4.3e12, help="DRAM bytes/s")
    p.add_argument("--launch-us", type=float, default=2.0)
    p.add_argument("--step-latency", type=int, default=1000, help="cycles per chunk step of a state kernel")
    p.add_argument(
        "--dram-latency", type=int, default=1200, help="cycles, added per step when loads are not prefetched"
    )
    p.add_argument("--sass-dir", default=None, help="also write each kernel's SASS here")
    p.add_argument("--out", default=None, help="default results/gla_static.json (results/gla_static_scalar.json)")
    args = p.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compiling needs the real JIT
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    g_dtype = {"bf16": dtype, "fp32": torch.float32}[args.g_dtype]
    archs = tuple(int(a) for a in args.arch.split(","))
    scalar = args.gate == "head"
    paths = ["scalar"] if scalar else args.paths.split(",")
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / f"gla_static{'_scalar' if scalar else ''}.json")
    by_shape, variants, cuobjdump = compile_launches(shapes, dtype, g_dtype, archs, scalar)
    nvdisasm = os.path.join(os.path.dirname(cuobjdump), "nvdisasm")
    sass_dir = Path(args.sass_dir) if args.sass_dir else None
    if sass_dir:
        sass_dir.mkdir(parents=True, exist_ok=True)
    report = dict(
        kind="static estimate from compiled code, no GPU",
        date=datetime.date.today().isoformat(),
        machine=f"{os.cpu_count()}-core CPU, triton {__import__('triton').__version__}",
        model=dict(
            clock_hz=args.clock,
            bandwidth=args.bandwidth,
            launch_us=args.launch_us,
            step_latency=args.step_latency,
            dram_latency=args.dram_latency,
        ),
        dtype=args.dtype,
        g_dtype=args.g_dtype,
        gate=args.gate,
        paths={},
    )
    sm80 = {}
    for (B, T, arch), launches in by_shape.items():
        if arch == 80:
            for ln in launches:
                v = variants[ln["key"]]
                sm80[(B, T, ln["kernel"])] = dict(registers=v["registers"], spill=v["stack"], shared=v["shared"])
    for path in paths:
        out = report["paths"][path] = {}
        mode = "fast" if path == "scalar" else path  # the scalar kernels have no gate-dependent branch
        for (B, T, arch), launches in by_shape.items():
            if arch != 90:
                continue
            rows = []
            for ln in launches:
                k = analyse(ln, variants[ln["key"]], nvdisasm, sass_dir if (B, T) == shapes[0] else None, mode)
                k["compile_s"] = variants[ln["key"]]["compile_s"]
                k["sm80"] = sm80.get((B, T, ln["kernel"]))
                k["time"] = estimate(
                    k, args.clock, args.bandwidth, args.launch_us, args.step_latency, args.dram_latency
                )
                rows.append(k)
            tot_b = sum(r["time"]["bound_us"] for r in rows) / 1e3
            tot_a = sum(r["time"]["adjusted_us"] for r in rows) / 1e3
            fla = FLA_MS.get((B, T))
            out[f"B{B}T{T}"] = dict(kernels=rows, total_ms=tot_b, total_adjusted_ms=tot_a, fla_ms=fla)
            print(
                f"\n# B{B} T{T} H16 K128 V128 {args.dtype} (g {args.g_dtype}, per {args.gate}), {path} path: sm_90 "
                "static estimate "
                "from compiled code, no GPU"
            )
            print(table(rows))
            versus = f"; fla measured {fla:.2f} ms (H200): fla/ours {fla / tot_a:.2f}-{fla / tot_b:.2f}x" if fla else ""
            print(f"fwd+bwd: {tot_b:.2f} ms (issue/memory bound) .. {tot_a:.2f} ms (latency-adjusted){versus}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written to {args.out}")
    return 0


def table(rows) -> str:
    head = (
        "kernel",
        "grid",
        "warps",
        "regs",
        "smem KB",
        "blk/SM",
        "hot loop (iter x body, BAR, MUFU)",
        "instr/warp",
        "MUFU/warp",
        "MB",
        "mem us",
        "issue us",
        "bound",
        "floor us",
        "est us",
        "adj us",
        "sm80 regs/spill",
    )
    out = [head]
    for r in rows:
        h = r["hot"]
        hot = f"{h['trips']}x{h['body']}, {h['bar']}, {h['mufu']}" if h else "-"
        t = r["time"]
        s80 = f"{r['sm80']['registers']}/{r['sm80']['spill']}" if r.get("sm80") else "-"
        out.append(
            (
                r["kernel"],
                "x".join(map(str, r["grid"])),
                str(r["warps"]),
                str(r["registers"]),
                f"{r['shared'] / 1024:.1f}",
                str(r["blocks_per_sm"]),
                hot,
                str(r["counts"]["instr"]),
                str(r["counts"].get("mufu", 0)),
                f"{r['dram_bytes'] / 1e6:.0f}",
                f"{t['mem_us']:.0f}",
                f"{t['issue_us']:.0f}",
                r["cycles"]["bound"],
                f"{t['latency_floor_us']:.0f}",
                f"{t['bound_us']:.0f}",
                f"{t['adjusted_us']:.0f}",
                s80,
            )
        )
    w = [max(len(x[i]) for x in out) for i in range(len(head))]
    lines = ["  ".join(x.ljust(n) for x, n in zip(r, w)) for r in out]
    return "\n".join([lines[0], "  ".join("-" * n for n in w), *lines[1:]])


if __name__ == "__main__":
    sys.exit(main())
