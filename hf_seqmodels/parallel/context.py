"""Context parallelism: one sequence split over the ranks of a process group, each rank holding a contiguous slice.

    import torch.distributed as dist
    from hf_seqmodels import context_parallel

    ids = input_ids[:, lo:hi]              # this rank's slice: rank r holds positions lo..hi-1, in rank order
    with context_parallel():               # the default process group (or group=...)
        logits = model(input_ids=ids, position_ids=torch.arange(lo, hi)[None], use_cache=False).logits
        # the loss of the whole sequence: every rank's summed token losses over the total number of tokens
        loss = F.cross_entropy(logits.flatten(0, 1), shift_labels[:, lo:hi].flatten(), reduction="sum") / n_tokens
    loss.backward()                        # exchanges too (every rank calls it; the group is kept from the forward)
    for p in model.parameters():           # each rank holds its slice's share of every gradient: sum them
        dist.all_reduce(p.grad)

``shift_labels`` are the labels shifted by one over the WHOLE sequence (``labels[:, 1:]`` padded with -100 at the
end) before slicing: the last position of a slice predicts the first token of the next rank's slice, which a
per-slice ``labels=`` shift would drop. ``n_tokens`` counts the labelled tokens of the whole sequence. (Under DDP
over the same group, which averages gradients, multiply the loss by the group's size instead of summing.) With
transformers' ``Trainer``: :class:`hf_seqmodels.parallel.ContextParallelTrainer` does all of this.

What runs on a slice: ``chunk_gla`` (every rank runs its slice from a zero state; the ranks exchange each slice's
final state ``[B, H, K, V]`` and total log-decay, one all_gather, for each rank's true initial state; backward
mirrors it), the linear scans ``linear_scan`` and ``block2_scan`` (the same scheme for ``h_t = a_t h_{t-1} + b_t``:
each slice's total map and final state from a zero start, one all_gather, each rank composes the earlier ranks'
affine maps for the state entering its slice and adds its prefix products applied to it; reversed scans take it
from the later ranks), the causal convolutions of GLA and Mamba-2 (a halo of the previous slice's last
``conv_size - 1`` inputs) and Liger's and Lizard's sliding windows (a halo of the previous slice's last ``window``
keys and values after RoPE, with their padding mask; pass ``position_ids``, this slice's positions in the whole
sequence), and ParaRNN's Newton solve (``newton_solve``: every iteration's previous states take the previous
slice's last state, a halo of one position; its linear system is the distributed scan; its convergence test is the
maximum residual over the ranks, so all ranks run the same iterations; the fallback is the step-by-step solve passed
from rank to rank; the adjoint backward is the reversed distributed scan). So GLA, Liger, Lizard, Mamba-2 layers
(conv halo, scan on chunk_gla's per-head gate), S4D (``block2_scan``), Aaren (``linear_scan``, after one exchange of
the earlier slices' running max), ParaGRU and ParaLSTM (``mode="auto"`` runs Newton there; the fused Triton solvers
are bypassed for the generic one) run on slices. Each slice needs at least ``conv_size - 1`` / ``window`` positions
(one for the others); slices may differ in length (any T over any number of ranks). Everything else in these models
acts per position. Refused by name inside the block: global softmax attention (hybrid layouts, Lizard's
attention-transfer teacher: no ring attention), ParaRNN's ``mode="sequential"`` (and ``sequential_solve``,
``adjoint_solve``: step-by-step solves), H-Net (its inner network runs on chunk sequences whose length differs per
rank; its Mamba-2 layers alone would run), token-by-token decoding. Packed sequences (``cu_seqlens``) and an initial
cache or state are refused.
"""

from __future__ import annotations

from contextlib import contextmanager

from hf_seqmodels.kernels import context_parallel as _state


@contextmanager
def context_parallel(group=None):
    """Inside this block, every ``chunk_gla``, linear scan, Newton solve and causal convolution treats its input as
    this rank's contiguous slice of a sequence split over ``group``'s ranks (default: the default process group) in
    rank order, and exchanges what it needs so outputs and gradients equal the unsplit run (the backward, run by
    every rank, makes the mirror exchanges; it may run after the block). See the module docstring for the loss and
    the gradients."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context_parallel: torch.distributed is not initialized (call init_process_group first)")
    _state.push(group)
    try:
        yield
    finally:
        _state.pop()
