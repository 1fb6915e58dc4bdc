"""Does the suite catch bugs that are consistent with themselves? Apply each mutation to a copy of the package, run
the tests that should catch it, and report caught / MISSED. Not part of CI (each mutation runs a test selection).

    python -m benchmarks.mutation_check                 # every mutation
    python -m benchmarks.mutation_check --only hnet     # those whose name contains "hnet"

The copy is importable without installing it: ``kernels/`` is copied to ``hf_seqmodels/kernels`` and the copy goes
first on PYTHONPATH (an editable install's finder comes after the path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name, file, text to replace (each must occur exactly once), replacement, tests that should fail; a mutation may
#: change several places at once (tuples), so that it stays consistent with itself (e.g. a step and its Jacobian)
MUTATIONS = [
    (
        "paragru-update-convention",
        "hf_seqmodels/kernels/pararnn/cells.py",
        (
            "return (1 - z) * h + z * c",
            "return (1 - z) + (c - h) * z * (1 - z) * a[0] + z * (1 - c * c) * a[2] * (r + h * dr)",
        ),
        (
            "return z * h + (1 - z) * c",
            "return z + (h - c) * z * (1 - z) * a[0] + (1 - z) * (1 - c * c) * a[2] * (r + h * dr)",
        ),
        "tests/models/test_pararnn.py tests/layers/test_mixers_reference.py",
    ),
    (
        "pararnn-conv-init-not-identity",
        "hf_seqmodels/layers/conv.py",
        "identity[..., -1] = 1.0",
        "identity[..., -1] = 0.02",
        "tests/models/test_pararnn_init.py tests/test_state_tracking.py",
    ),
    (
        "packed-conv-taps-cross-sequences",
        "hf_seqmodels/layers/conv.py",
        "y = y + shifted * (pos >= lag).to(x.dtype)[None, :, None] * w[:, W - 1 - lag]",
        "y = y + shifted * w[:, W - 1 - lag]",
        "tests/models/test_packed_models.py tests/kernels/test_packed_kernels.py",
    ),
    (
        "register-cell-not-verified",
        "hf_seqmodels/layers/pararnn.py",
        "    if cls in _VERIFIED:",
        "    if True:",
        "tests/test_register_cell.py",
    ),
    (
        "state-tracking-modular-no-precedence",
        "hf_seqmodels/evaluation/state_tracking.py",
        "term = torch.where(op == 2, (term * x) % modulus, new_term)",
        "term = torch.where(op == 2, (total + term) * x % modulus, new_term)",
        "tests/test_state_tracking.py",
    ),
    (
        "state-tracking-lm-init",
        "hf_seqmodels/evaluation/state_tracking.py",
        'PARARNN_STATE_TRACKING = {"recurrent_init": "uniform"}',
        "PARARNN_STATE_TRACKING = {}",
        "tests/test_state_tracking.py",
    ),
    (
        "pararnn-uniform-init-narrow",
        "hf_seqmodels/layers/pararnn.py",
        "UNIFORM_BOUND = 0.9",
        "UNIFORM_BOUND = 0.09",
        "tests/models/test_pararnn_init.py",
    ),
    (
        "state-tracking-fallbacks-warned",
        "hf_seqmodels/evaluation/state_tracking.py",
        "@_fallbacks_counted_not_warned()\n",
        "\n",
        "tests/test_state_tracking.py",
    ),
    (
        "gla-layer-q-k-swapped",
        "hf_seqmodels/layers/gla.py",
        "o, final = op(q, k, v, g,",
        "o, final = op(k, q, v, g,",
        "tests/layers/test_mixers_reference.py",
    ),
    (
        "liger-gate-sign",
        "hf_seqmodels/layers/liger.py",
        "g = F.logsigmoid(k.to(wide))",
        "g = F.logsigmoid(-k.to(wide))",
        "tests/models/test_liger.py tests/layers/test_mixers_reference.py",
    ),
    (
        "qwen3-no-qk-norm",
        "hf_seqmodels/layers/linearized.py",
        "q, k = self.q_norm(q), self.k_norm(k)",
        "q, k = q, k",
        "tests/models/test_linearize_families.py",
    ),
    (
        "phi3-fused-qkv-k-v-swapped",
        "hf_seqmodels/layers/linearized.py",
        "q, k, v = self.qkv_proj(x).split(",
        "q, v, k = self.qkv_proj(x).split(",
        "tests/models/test_linearize_families.py",
    ),
    (
        "softmax-layer-sees-its-next-key",
        "hf_seqmodels/layers/linearized.py",
        "allowed = (key_pos[None, :] <= query_pos[:, None])[None]",
        "allowed = (key_pos[None, :] <= query_pos[:, None] + 1)[None]",
        "tests/models/test_linearize_families.py",
    ),
    (
        "softmax-layer-ignores-teacher-window",
        "hf_seqmodels/layers/linearized.py",
        "        if self.teacher_window is not None:\n            o = self.window_attention(",
        "        if False:\n            o = self.window_attention(",
        "tests/models/test_linearize_families.py",
    ),
    (
        "family-rope-from-llama",
        "hf_seqmodels/layers/linearized.py",
        'self.apply_rotary = self.family.component("apply_rotary_pos_emb")',
        "from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as _r; self.apply_rotary = _r",
        "tests/models/test_linearize_families.py",
    ),
    (
        "lizard-mixing-weight-on-gla",
        "hf_seqmodels/layers/lizard.py",
        "o = o_gla + self.window_weight.to(o_win.dtype)[:, None] * o_win",
        "o = self.window_weight.to(o_win.dtype)[:, None] * o_gla + o_win",
        "tests/models/test_lizard.py tests/layers/test_mixers_reference.py",
    ),
    (
        "mamba2-b-c-swapped",
        "hf_seqmodels/layers/mamba2.py",
        "x, Bm, Cm = xBC.to(cdt).split(",
        "x, Cm, Bm = xBC.to(cdt).split(",
        "tests/layers/test_mamba2.py",
    ),
    (
        "mamba2-no-d-skip",
        "hf_seqmodels/layers/mamba2.py",
        "y = y + self.D.to(cdt)[:, None] * x",
        "y = y + 0 * x",
        "tests/layers/test_mamba2.py",
    ),
    (
        "memory-ffn-gate-up-swapped",
        "hf_seqmodels/kernels/memory/torch_ffn.py",
        "y = torch.bmm(F.silu(g) * u, wd)",
        "y = torch.bmm(F.silu(u) * g, wd)",
        "tests/kernels/test_memory_ffn.py tests/memory",
    ),
    (
        "memory-route-farthest-centroid",
        "hf_seqmodels/memory/index.py",
        "parent = children.gather(1, d2.argmin(1, keepdim=True)).squeeze(1)",
        "parent = children.gather(1, d2.masked_fill(d2 == float('inf'), -1).argmax(1, keepdim=True)).squeeze(1)",
        "tests/memory",
    ),
    (
        "memory-branch-not-added",
        "hf_seqmodels/memory/attach.py",
        "        return output + memory_ffn(x, *w)",
        "        return output + 0 * memory_ffn(x, *w)",
        "tests/memory",
    ),
    (
        "hnet-router-previous-token",
        "hf_seqmodels/layers/hnet.py",
        "cos = (torch.cat([prev_q, q[:, :-1]], 1) * k).sum(-1)",
        "cos = (q * k).sum(-1)",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-boundary-threshold",
        "hf_seqmodels/layers/hnet.py",
        "return p, (p > 0.5) & valid",
        "return p, (p > 0.4) & valid",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-ema-swapped",
        "hf_seqmodels/layers/hnet.py",
        "a = (1 - P)[..., None]",
        "a = P[..., None]",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-upsample-off-by-one",
        "hf_seqmodels/layers/hnet.py",
        "index = torch.where(c > 0, M - counts[:, None] + c,",
        "index = torch.where(c > 0, M - counts[:, None] + c - 1,",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-no-residual",
        "hf_seqmodels/models/hnet/modeling_hnet.py",
        "out = (up * StraightThrough.apply(confidence)[..., None] + residual)",
        "out = (up * StraightThrough.apply(confidence)[..., None])",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-ratio-loss-terms",
        "hf_seqmodels/layers/hnet.py",
        "per_row = N / (N - 1) * ((N - 1) * frac * prob + (1 - frac) * (1 - prob))",
        "per_row = N / (N - 1) * ((N - 1) * frac * prob + (1 - frac) * prob)",
        "tests/models/test_hnet.py",
    ),
    (
        "hnet-decode-no-restore",
        "hf_seqmodels/models/hnet/modeling_hnet.py",
        "            _restore_rows(cache, keep, mask[:, 0])",
        "            pass",
        "tests/models/test_hnet.py",
    ),
    # (a constant shift of all positions would be no bug: rotary scores depend on position differences only)
    (
        "attention-rotary-direction",
        "hf_seqmodels/layers/attention.py",
        "apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, sin, unsqueeze_dim=1)",
        "apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, -sin, unsqueeze_dim=1)",
        "tests/models/test_hnet.py",
    ),
    (
        "attention-padding-visible",
        "hf_seqmodels/layers/attention.py",
        "allowed = (kp >= 0) & (kp <= qp)",
        "allowed = kp <= qp",
        "tests/models/test_hnet.py",
    ),
    (
        "attention-window-off-by-one",
        "hf_seqmodels/layers/attention.py",
        "allowed &= qp - kp < self.window",
        "allowed &= qp - kp <= self.window",
        "tests/models/test_hnet.py",
    ),
]


def make_copy(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            target = dest / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    shutil.copytree(dest / "model_cards", dest / "hf_seqmodels" / "model_cards")


def run_tests(copy: Path, selection: str, timeout: int) -> tuple[bool, float]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection.split()],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode == 0, time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutations whose name contains this")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only in m[0]]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        make_copy(copy)
        ok, secs = run_tests(copy, " ".join(sorted({m[4] for m in chosen})), args.timeout)
        if not ok:
            print("the unmutated suite fails in the copy: fix that first")
            return 1
        for name, rel, old, new, selection in chosen:
            path = copy / ("hf_seqmodels/kernels/" + rel[len("kernels/") :] if rel.startswith("kernels/") else rel)
            text = path.read_text()
            olds, news = (old, new) if isinstance(old, tuple) else ((old,), (new,))
            counts = [text.count(o) for o in olds]
            if counts != [1] * len(olds):
                print(f"{name}: the texts to mutate occur {counts} times in {rel}; skipped")
                results.append(dict(name=name, status="stale"))
                continue
            mutated = text
            for o, n in zip(olds, news):
                mutated = mutated.replace(o, n)
            path.write_text(mutated)
            try:
                passed, secs = run_tests(copy, selection, args.timeout)
            finally:
                path.write_text(text)
            status = "MISSED" if passed else "caught"
            print(f"{status:7s} {name}  ({selection}, {secs:.0f} s)", flush=True)
            results.append(dict(name=name, status=status, tests=selection, seconds=round(secs, 1)))
    caught = sum(r["status"] == "caught" for r in results)
    print(f"\n{caught} of {len(results)} mutations caught")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
