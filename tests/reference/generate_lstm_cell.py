#!/usr/bin/env python
"""Generate tests/reference/lstm_cell.npz, the PyTorch float64 fixtures of
tests/core/test_lstm_cell.py (metalearn's fused LSTM cell, ``_core.lstm_cell``).

Run by hand (needs torch; the test suite itself does not):

    /work/kref/bin/python tests/reference/generate_lstm_cell.py

The cell, Keras' LSTM step with its default activations (gates i, f, c, o along z's last
axis): ``c = sigmoid(z_f) c_prev + sigmoid(z_i) tanh(z_c)``, ``h = sigmoid(z_o) tanh(c)``,
out = ``[h | c]``. Inputs are float32, the references torch float64 from them.

Per case ``<case>/``:
  z, c_prev          float32 inputs (B, 4u), (B, u)
  w                  float32 weights of L = sum(out * w)
  vz, vc             float32 directions of the second order
  uz, uc, uw         float32 directions of the third order
  out                float64 forward
  gz, gc             dL/dz, dL/dc_prev
  hz, hc, hw         d/d{z, c_prev, w} of S2 = <dL/dz, vz> + <dL/dc_prev, vc>
  tz, tc, tw         d/d{z, c_prev, w} of S3 = <hz, uz> + <hc, uc> + <hw, uw>
"""

import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, batch, units, scale of z, scale of c_prev): units not a multiple of 8, saturated
# gates (|z| up to ~12), a large previous state
CASES = [
    ("b3_u5", 3, 5, 1.5, 1.0),
    ("b4_u8_saturated", 4, 8, 6.0, 2.0),
    ("b2_u16", 2, 16, 1.0, 3.0),
    ("b1_u3", 1, 3, 2.0, 0.5),
]


def cell(z, cp):
    u = cp.shape[1]
    i, f = torch.sigmoid(z[:, :u]), torch.sigmoid(z[:, u : 2 * u])
    g, o = torch.tanh(z[:, 2 * u : 3 * u]), torch.sigmoid(z[:, 3 * u :])
    c = f * cp + i * g
    return torch.cat([o * torch.tanh(c), c], 1)


def main():
    rng = np.random.default_rng(22)
    out = {}
    for name, b, u, zs, cs in CASES:
        f32 = {
            "z": (rng.standard_normal((b, 4 * u)) * zs).astype(np.float32),
            "c_prev": (rng.standard_normal((b, u)) * cs).astype(np.float32),
            "w": rng.standard_normal((b, 2 * u)).astype(np.float32),
            "vz": rng.standard_normal((b, 4 * u)).astype(np.float32),
            "vc": rng.standard_normal((b, u)).astype(np.float32),
            "uz": rng.standard_normal((b, 4 * u)).astype(np.float32),
            "uc": rng.standard_normal((b, u)).astype(np.float32),
            "uw": rng.standard_normal((b, 2 * u)).astype(np.float32),
        }
        t = {k: torch.tensor(v, dtype=torch.float64) for k, v in f32.items()}
        z, cp, w = (t[k].requires_grad_(True) for k in ("z", "c_prev", "w"))
        y = cell(z, cp)
        gz, gc = torch.autograd.grad((y * w).sum(), [z, cp], create_graph=True)
        s2 = (gz * t["vz"]).sum() + (gc * t["vc"]).sum()
        hz, hc, hw = torch.autograd.grad(s2, [z, cp, w], create_graph=True)
        s3 = (hz * t["uz"]).sum() + (hc * t["uc"]).sum() + (hw * t["uw"]).sum()
        tz, tc, tw = torch.autograd.grad(s3, [z, cp, w])
        for k, v in f32.items():
            out[f"{name}/{k}"] = v
        res = dict(out=y, gz=gz, gc=gc, hz=hz, hc=hc, hw=hw, tz=tz, tc=tc, tw=tw)
        for k, v in res.items():
            out[f"{name}/{k}"] = v.detach().numpy()
    path = os.path.join(HERE, "lstm_cell.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(CASES)} cases")


if __name__ == "__main__":
    main()
