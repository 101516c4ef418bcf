//! The network: a stack of LSTM layers and a linear head, generic over burn's backend.
//!
//! Each layer keeps its four gates in one matrix (`[d_in, 4H]` for the input,
//! `[H, 4H]` for the recurrence, gate order i, f, g, o as PyTorch/cuDNN), so a
//! time step costs one matrix product, and the input products of every time step
//! are one matrix product for the whole sequence, as cuDNN does. burn's stock
//! `nn::Lstm` computes the gates with eight separate products a step.
//!
//! Weights are drawn from our own seeded generator (PyTorch's uniform(±1/√H)),
//! not the backend's, so a seed gives the same initial model on the CPU and the
//! GPU and layers trained on parallel threads never share a random stream.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Module, Debug)]
pub struct Cell<B: Backend> {
    /// `[d_in, 4H]`.
    pub w_ih: Param<Tensor<B, 2>>,
    /// `[H, 4H]`.
    pub w_hh: Param<Tensor<B, 2>>,
    /// `[4H]`.
    pub bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    pub cells: Vec<Cell<B>>,
    /// `[H, out]`.
    pub head_w: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub head_b: Param<Tensor<B, 1>>,
}

/// The state of every layer: `(hidden, cell)`, each `[batch, H]`.
pub type State<B> = Vec<(Tensor<B, 2>, Tensor<B, 2>)>;

fn uniform<B: Backend>(rng: &mut StdRng, shape: [usize; 2], bound: f32, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..shape[0] * shape[1]).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

impl<B: Backend> Net<B> {
    /// A fresh network with `layers` LSTM layers of `hidden` units reading `d_in`
    /// features a step and writing `d_out` numbers from the last hidden state.
    pub fn init(d_in: usize, hidden: usize, layers: usize, d_out: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = 1.0 / (hidden as f32).sqrt();
        let cells = (0..layers)
            .map(|l| {
                let d = if l == 0 { d_in } else { hidden };
                let w_ih = uniform::<B>(&mut rng, [d, 4 * hidden], bound, device);
                let w_hh = uniform::<B>(&mut rng, [hidden, 4 * hidden], bound, device);
                let b: Vec<f32> = (0..4 * hidden).map(|_| rng.random_range(-bound..bound)).collect();
                Cell {
                    w_ih: Param::from_tensor(w_ih),
                    w_hh: Param::from_tensor(w_hh),
                    bias: Param::from_tensor(Tensor::from_data(TensorData::new(b, [4 * hidden]), device)),
                }
            })
            .collect();
        let head_w = uniform::<B>(&mut rng, [hidden, d_out], bound, device);
        let hb: Vec<f32> = vec![0.0; d_out];
        Net {
            cells,
            head_w: Param::from_tensor(head_w),
            head_b: Param::from_tensor(Tensor::from_data(TensorData::new(hb, [d_out]), device)),
        }
    }

    pub fn hidden(&self) -> usize {
        self.cells[0].w_hh.dims()[0]
    }

    /// Runs `x` (`[batch, T, d_in]`) from `state` (zeros when `None`); returns the
    /// head's output from the last step (`[batch, d_out]`) and the final state.
    pub fn forward(&self, x: Tensor<B, 3>, state: Option<State<B>>) -> (Tensor<B, 2>, State<B>) {
        let [batch, steps, _] = x.dims();
        let h_units = self.hidden();
        let device = x.device();
        let mut state = state.unwrap_or_else(|| {
            self.cells
                .iter()
                .map(|_| (Tensor::zeros([batch, h_units], &device), Tensor::zeros([batch, h_units], &device)))
                .collect()
        });
        let mut seq = Some(x);
        let n = self.cells.len();
        for (l, cell) in self.cells.iter().enumerate() {
            let seq_in = seq.take().expect("the previous layer's outputs");
            let d = seq_in.dims()[2];
            // Input products of every step at once: [batch * T, 4H].
            let xp = seq_in
                .reshape([batch * steps, d])
                .matmul(cell.w_ih.val())
                .add(cell.bias.val().unsqueeze_dim(0))
                .reshape([batch, steps, 4 * h_units]);
            let (mut h, mut c) = state[l].clone();
            let mut outs = Vec::with_capacity(if l + 1 < n { steps } else { 0 });
            for t in 0..steps {
                let gates = xp.clone().narrow(1, t, 1).reshape([batch, 4 * h_units]) + h.matmul(cell.w_hh.val());
                let mut g = gates.chunk(4, 1).into_iter();
                let (i, f, gg, o) = (g.next().unwrap(), g.next().unwrap(), g.next().unwrap(), g.next().unwrap());
                c = sigmoid(f) * c + sigmoid(i) * gg.tanh();
                h = sigmoid(o) * c.clone().tanh();
                if l + 1 < n {
                    outs.push(h.clone());
                }
            }
            state[l] = (h, c);
            if l + 1 < n {
                seq = Some(Tensor::stack(outs, 1));
            }
        }
        let top = state[n - 1].0.clone();
        let y = top.matmul(self.head_w.val()).add(self.head_b.val().unsqueeze_dim(0));
        (y, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::{LstmConfig, LstmState};

    type B = NdArray<f32>;

    /// Our fused-gate stack equals burn's stock `nn::Lstm` layers given the same
    /// weights (stock gates: input, forget, cell, output; weights [d, H] each, a
    /// bias on both the input and the hidden transform).
    #[test]
    fn fused_gates_match_burns_stock_lstm() {
        let dev = Default::default();
        let (n, steps, d_in, h, layers) = (5, 7, 3, 6, 2);
        let net: Net<B> = Net::init(d_in, h, layers, 2, 3, &dev);
        let mut rng = StdRng::seed_from_u64(9);
        let xv: Vec<f32> = (0..n * steps * d_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = Tensor::<B, 3>::from_data(TensorData::new(xv, [n, steps, d_in]), &dev);
        let mut seq = x.clone();
        let mut last = None;
        for (l, cell) in net.cells.iter().enumerate() {
            let d = if l == 0 { d_in } else { h };
            let mut stock = LstmConfig::new(d, h, true).init::<B>(&dev);
            let part = |w: Tensor<B, 2>, g: usize| w.narrow(1, g * h, h);
            let bias = |g: usize| cell.bias.val().narrow(0, g * h, h);
            for (g, gate) in [&mut stock.input_gate, &mut stock.forget_gate, &mut stock.cell_gate, &mut stock.output_gate].into_iter().enumerate() {
                gate.input_transform.weight = Param::from_tensor(part(cell.w_ih.val(), g));
                gate.input_transform.bias = Some(Param::from_tensor(bias(g)));
                gate.hidden_transform.weight = Param::from_tensor(part(cell.w_hh.val(), g));
                gate.hidden_transform.bias = Some(Param::from_tensor(Tensor::zeros([h], &dev)));
            }
            let (out, state): (Tensor<B, 3>, LstmState<B, 2>) = stock.forward(seq, None);
            seq = out;
            last = Some(state.hidden);
        }
        let want = last.unwrap().matmul(net.head_w.val()).add(net.head_b.val().unsqueeze_dim(0));
        let (got, _) = net.forward(x, None);
        let (a, b) = (got.into_data().to_vec::<f32>().unwrap(), want.into_data().to_vec::<f32>().unwrap());
        assert_eq!(a.len(), n * 2);
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
