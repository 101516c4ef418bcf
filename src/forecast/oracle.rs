//! `oracle-median`: the best constant in hindsight, a floor for comparison.

use super::simple::stateless;
use super::{Emit, FitContext, Fitted, Forecaster, Known, LayerView, column_medians, repeat_row, window_medians};

pub static ORACLE_MEDIAN: Known = Known {
    name: "oracle-median",
    doc: "median of the actual future over the horizon: a floor, not a forecast",
    params: &[],
    build: |_| Ok(Box::new(OracleMedian)),
};

/// For horizon `h`, the median of the actual `p[o .. o+h-1]` of each expert (the
/// mean of the two middle values when `h` is even). It reads the future, so it is
/// never renormalised and never a real forecast.
#[derive(Debug, Clone, Copy)]
pub struct OracleMedian;

stateless!(OracleMedian, |_| 0, |_| "oracle-median".into();
    fn is_real(&self) -> bool {
        false
    }
    fn horizon_dependent(&self) -> bool {
        true
    }
    fn on_device(&self) -> Option<super::DeviceModel> {
        Some(super::DeviceModel::OracleMedian)
    }
);

impl Fitted for OracleMedian {
    /// Reads `layer` from `origin` on: the oracle is given the whole layer.
    fn predict(&self, layer: &LayerView, origin: usize, out: &mut [f64]) -> usize {
        let h = out.len() / layer.experts();
        repeat_row(out, &column_medians(layer, origin, origin + h));
        0
    }
    fn flat(&self) -> bool {
        true
    }
    /// The whole layer, not the history before each origin: it reads the future.
    /// The medians of all origins are taken together ([`window_medians`]: blocks of
    /// experts in parallel, each window's counts slid from the one before), then
    /// emitted in order.
    fn predict_origins(&self, layer: &LayerView, origins: &[usize], lens: &[usize], emit: &mut Emit<'_>) -> anyhow::Result<()> {
        let mut rows = window_medians(layer, origins, lens);
        for (i, row) in rows.chunks_mut(layer.experts()).enumerate() {
            emit(i, row, None, 0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_the_scored_future() {
        // one expert: .1 .9 .3 .5 .2
        let p = [0.1, 0.9, 0.3, 0.5, 0.2];
        let v = LayerView::new(&p, 1);
        let mut out = vec![0.0; 3];
        OracleMedian.predict(&v, 1, &mut out); // .9 .3 .5 -> .5
        assert_eq!(out, vec![0.5; 3]);
        let mut out = vec![0.0; 4];
        OracleMedian.predict(&v, 1, &mut out); // .9 .3 .5 .2 -> (.3 + .5) / 2
        assert_eq!(out, vec![0.4; 4]);
    }
}
