"""Peer for `expertcast bench --stage lstm`: PyTorch's nn.LSTM (cuDNN) with a linear
head, the sizes of the issue (input 1, hidden 64, 2 layers, sequence 100), training
batch 4,096 (forward, MSE, backward, Adam step) and inference batch 65,536 under
torch.no_grad, float32, random data. Prints windows per second and one JSON line.

usage: python3 benches/peers/lstm_torch.py [--steps N]"""
import argparse
import json
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--batch", type=int, default=4096)
ap.add_argument("--infer-batch", type=int, default=65536)
ap.add_argument("--seq", type=int, default=100)
ap.add_argument("--hidden", type=int, default=64)
ap.add_argument("--layers", type=int, default=2)
a = ap.parse_args()

dev = torch.device("cuda")
torch.manual_seed(1)
torch.backends.cudnn.benchmark = True


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(1, a.hidden, a.layers, batch_first=True)
        self.head = torch.nn.Linear(a.hidden, 1)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


net = Net().to(dev)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.rand(a.batch, a.seq, 1, device=dev) * 2 - 1
y = torch.rand(a.batch, 1, device=dev) * 2 - 1


def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(net(x), y)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(a.steps):
    step()
torch.cuda.synchronize()
train = a.steps * a.batch / (time.perf_counter() - t)

xi = torch.rand(a.infer_batch, a.seq, 1, device=dev) * 2 - 1
with torch.no_grad():
    for _ in range(2):
        net(xi)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.steps):
        net(xi)
    torch.cuda.synchronize()
infer = a.steps * a.infer_batch / (time.perf_counter() - t)
print(f"torch {torch.__version__} nn.LSTM (cuDNN {torch.backends.cudnn.version()}) on {torch.cuda.get_device_name()}: "
      f"input 1, hidden {a.hidden}, {a.layers} layers, sequence {a.seq}: training {train / 1e6:.4f} M windows/s "
      f"(batch {a.batch}, {1e3 * a.batch / train:.2f} ms a step), inference {infer / 1e6:.4f} M windows/s (batch {a.infer_batch})")
print(json.dumps({"impl": "torch-cudnn", "train_windows_per_s": round(train, 1), "infer_windows_per_s": round(infer, 1)}))
