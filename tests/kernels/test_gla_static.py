"""benchmarks/gla_static.py: the SASS reading behind the static GLA estimate (no compiler needed here).

A hand-written SASS listing in nvdisasm's format, with source lines pointing into a small Python file, must give
exactly the executed-instruction counts worked out by hand; the branch-side selection, the occupancy and the traffic
formulas are checked the same way.
"""

import textwrap

import pytest

from benchmarks import gla_static as G

SOURCE = textwrap.dedent("""\
    def kern(x, N, SUB, LIMIT):
        a = 0
        for i in range(N):
            b = 1
            for j in range(SUB):
                c = 2
            if span <= LIMIT:
                d = fast(x)
            else:
                slow = 1
        if slow:
            e = helper(x)


    def fast(x):
        return x


    def helper(x):
        return x
    """)


def sass(src):
    def at(line):
        return f'\t//## File "{src}", line {line}\n'

    return (
        at(2) + "        /*0000*/                   MOV R1, R2 ;\n"
        ".L_x_1:\n" + at(4) + "        /*0010*/                   FFMA R1, R2, R3, R4 ;\n"
        ".L_x_0:\n" + at(6) + "        /*0020*/                   MUFU.EX2 R1, R1 ;\n"
        "        /*0030*/               @P0 BRA `(.L_x_0) ;\n"
        + at(4)
        + "        /*0040*/                   LDS.128 R4, [R2] ;\n"
        "        /*0050*/               @P1 BRA `(.L_x_1) ;\n"
        + at(11)
        + "        /*0060*/               @P2 BRA `(.L_x_3) ;\n"
        + at(12)
        + "        /*0070*/                   SHFL.BFLY PT, R1, R1, 0x1, 0x1f ;\n"
        + at(19)
        + "        /*0080*/                   IADD3 R1, R1, 0x1, RZ ;\n"
        ".L_x_3:\n" + at(2) + "        /*0090*/              @!PT LDS RZ, [RZ] ;\n"
        "        /*00a0*/               @P3 BRA.DIV UR4, `(.L_x_2) ;\n"
        "        /*00b0*/                   EXIT ;\n"
        ".L_x_2:\n        /*00c0*/                   SHFL.BFLY PT, R1, R1, 0x1, 0x1f ;\n"
        "        /*00d0*/                   BRA `(.L_x_2) ;\n"
    )


@pytest.fixture
def listing(tmp_path):
    src = tmp_path / "src.py"
    src.write_text(SOURCE)
    return str(src), G.parse_sass(sass(src))


def counted(src, instrs, mode, args):
    hot = G.hot_instructions(instrs, G.cold_lines(src, "kern", mode))
    loops = G.assign_trips(hot, G.find_loops(hot), args)
    return G.count(hot, loops), loops


def test_loops_get_the_source_trip_counts_and_counts_multiply(listing):
    src, instrs = listing
    (c, hot), loops = counted(src, instrs, "exact", dict(N=3, SUB=4, LIMIT=64))
    assert [(lp["source_text"], lp["trips"], lp["depth"]) for lp in loops] == [("range(N)", 3, 0), ("range(SUB)", 4, 1)]
    # MOV 1, FFMA 3, MUFU 12, inner BRA 12, LDS 3, outer BRA 3, if-BRA 1, SHFL 1, IADD3 1, BRA.DIV 1, EXIT 1;
    # not: the @!PT no-op, the diverged-warp path after EXIT
    assert c["instr"] == 1 + 3 + 12 + 12 + 3 + 3 + 1 + 1 + 1 + 1 + 1
    assert (c["mufu"], c["xu"], c["fma"], c["shfl"]) == (12, 12, 3, 1)
    assert c["smem_bytes"] == 3 * 32 * 16
    assert hot["source"].endswith("src.py:5") and hot["trips"] == 4 and hot["body"] == 2 and hot["mufu"] == 1


def test_the_fast_path_drops_the_slow_pass_and_the_helpers_only_it_calls(listing):
    src, instrs = listing
    cold = {ln for _, ln in G.cold_lines(src, "kern", "fast")}
    assert {10, 12} <= cold and 8 not in cold  # the else branch and the slow pass; not the fast branch
    assert {19, 20} <= cold and 16 not in cold  # helper() is called from the slow pass only; fast() is called
    assert 8 in {ln for _, ln in G.cold_lines(src, "kern", "blocked")}
    (c, _), _ = counted(src, instrs, "fast", dict(N=3, SUB=4, LIMIT=64))
    # the slow pass's block (SHFL of line 12, IADD3 of helper) is gone
    assert c["shfl"] == 0 and c["instr"] == 1 + 3 + 12 + 12 + 3 + 3 + 1 + 1 + 1


def test_a_loop_without_a_countable_range_is_an_error(tmp_path):
    src = tmp_path / "w.py"
    src.write_text("def kern(N):\n    while N:\n        N -= 1\n")
    at = f'\t//## File "{src}", line 3\n'
    text = (
        ".L_x_0:\n" + at + "        /*0000*/                   IADD3 R1, R1, -0x1, RZ ;\n"
        "        /*0010*/               @P0 BRA `(.L_x_0) ;\n        /*0020*/                   EXIT ;\n"
    )
    instrs = G.parse_sass(text)
    with pytest.raises(ValueError, match="while loop"):
        G.assign_trips(instrs, G.find_loops(instrs), dict(N=5))


def test_blocks_per_sm():
    assert G.blocks_per_sm(128, 8, 0) == 2  # 65536 registers / (256 threads x 128)
    assert G.blocks_per_sm(255, 4, 0) == 2
    assert G.blocks_per_sm(129, 8, 0) == 1  # 136 after rounding to 8 per thread
    assert G.blocks_per_sm(64, 4, 105 * 1024) == 2  # 228 KB of shared memory, 1 KB reserved per block
    assert G.blocks_per_sm(32, 4, 0) == 16  # 64 warps per SM


def test_program_cycles_take_the_busiest_unit():
    c = {
        "instr": 100,
        "fma": 10,
        "imad": 0,
        "alu": 20,
        "xu": 30,
        "shfl": 0,
        "smem_bytes": 0,
        "mma_macs": 0,
        "mma_macs_tf32": 0,
    }
    cyc = G.program_cycles(c, warps=4)
    assert cyc["bound"] == "xu" and cyc["program"] == 30 * 8  # 4 warps: one per scheduler; MUFU 8 cycles each
    c.update(xu=0, mma_macs=64 * 128 * 16 * 10)  # ten HGMMA 64x128x16 per warpgroup
    assert G.program_cycles(c, warps=4)["tensor"] == 10 * 64 * 128 * 16 / 2048


def test_traffic_needs_every_tensor_argument():
    nbytes = {"q": 100, "k": 100, "g": 100, "h": 400, "v": 100, "o": 100, "A": 50, "flags": 4}
    total, per = G.traffic_bytes("_output_kernel", nbytes, [2, 3], {}, path="fast")
    assert total == sum(nbytes.values())
    total, _ = G.traffic_bytes("_output_kernel", nbytes, [2, 3], {}, path="blocked")
    assert total == sum(nbytes.values()) - 100 - 100 - 50  # the flagged chunks' v, o, A go to the slow kernel
    with pytest.raises(KeyError, match="new_tensor"):
        G.traffic_bytes("_output_kernel", dict(nbytes, new_tensor=1), [2, 3], {})
