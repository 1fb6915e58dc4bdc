"""Write a new recurrent cell; it trains in parallel over the sequence with no further code.

    python examples/custom_pararnn_cell.py

A cell declares its Jacobian structure and writes one step. Here: a leaky tanh unit with a diagonal recurrent
weight, ``h_t = (1 - l) * h_{t-1} + l * tanh(w * h_{t-1} + B x_t + b)`` with a learned per-unit leak ``l``.
The Jacobian is diagonal; hf-seqmodels derives it with autograd (a closed-form ``jacobian`` method is optional and
faster). ``register_cell`` makes it available to ``ParaRNNConfig(cell=...)``.
"""

import torch
from torch import nn
from transformers import AutoModelForCausalLM

import hf_seqmodels
from hf_seqmodels.layers.pararnn import ParallelRNNCell, check_jacobian_structure, register_cell


class LeakyTanhCell(ParallelRNNCell):
    structure = "diagonal"

    def __init__(self, input_size, state_size):
        super().__init__(input_size, state_size)
        self.in_proj = nn.Linear(input_size, 2 * state_size)  # candidate input and leak logit
        self.w = nn.Parameter(torch.randn(state_size) * 0.1)

    def input_projection(self, x):  # parallel over time: [B, T, 2, D]
        return self.in_proj(x).unflatten(-1, (2, self.state_size))

    def recurrent_params(self):  # tensors the step reads: passed in so they get gradients
        return (self.w,)

    def step(self, h_prev, u, w):  # one step, vectorized over [B, T, D]
        leak = torch.sigmoid(u[..., 1, :])
        return (1 - leak) * h_prev + leak * torch.tanh(w * h_prev + u[..., 0, :])


register_cell("leaky_tanh", LeakyTanhCell)


def main():
    check_jacobian_structure(LeakyTanhCell(8, 4))  # raises if the step mixes units
    config = hf_seqmodels.ParaRNNConfig(cell="leaky_tanh", vocab_size=256, hidden_size=64, num_hidden_layers=2)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 256, (2, 100))
    parallel = model(ids, labels=ids)
    parallel.loss.backward()
    model.config.mode = "sequential"  # the step-by-step reference: same result
    with torch.no_grad():
        sequential = model(ids, labels=ids)
    print(f"loss parallel {parallel.loss.item():.6f} vs sequential {sequential.loss.item():.6f}")


if __name__ == "__main__":
    main()
