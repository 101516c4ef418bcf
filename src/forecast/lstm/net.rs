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
