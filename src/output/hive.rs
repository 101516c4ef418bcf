//! A sweep's dataset: each table of a unit split by trace into
//! `OUT/TABLE/trace=NAME/part-UNIT.parquet`, with the unit's settings as columns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};

use super::{AtomicParquet, Sink, Table};

/// The tables a sweep keeps, in the order they are published.
pub const TABLES: [Table; 4] = [Table::Metrics, Table::States, Table::LayerStats, Table::Placement];

/// The settings of a unit that become columns of its rows.
#[derive(Debug, Clone)]
pub struct UnitColumns {
    pub id: String,
    pub origin_stride: usize,
    pub state_window: usize,
    pub kappa: f64,
}

/// Hive partition value: file-name-safe characters kept, others percent-encoded.
pub fn hive_value(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// One unit's tables, held until [`finish`](Sink::finish) splits them by trace and
/// publishes each part under its final name. Tables a sweep does not keep are
/// dropped.
pub struct HiveSink {
    out: PathBuf,
    unit: UnitColumns,
    batches: BTreeMap<Table, Vec<RecordBatch>>,
}

impl HiveSink {
    pub fn new(out: PathBuf, unit: UnitColumns) -> HiveSink {
        HiveSink { out, unit, batches: BTreeMap::new() }
    }

    fn publish(&self, table: Table, batches: &[RecordBatch]) -> anyhow::Result<()> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let schema = table.schema();
        let all = arrow::compute::concat_batches(&schema, batches)?;
        let ti = schema.index_of("trace")?;
        let names = all.column(ti).as_any().downcast_ref::<StringArray>().context("trace column")?.clone();
        let mut by_trace: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for r in 0..all.num_rows() {
            by_trace.entry(names.value(r).to_string()).or_default().push(r as u32);
        }
        let mut fields: Vec<Field> = schema.fields().iter().filter(|f| f.name() != "trace").map(|f| f.as_ref().clone()).collect();
        // The unit's settings as columns, but for one the table has already
        // (states.parquet's kappa, which is the unit's).
        let u = &self.unit;
        let unit_cols: Vec<(Field, Box<dyn Fn(usize) -> ArrayRef>)> = vec![
            (Field::new("unit", DataType::Utf8, false), Box::new(|n| Arc::new(StringArray::from(vec![u.id.as_str(); n])))),
            (Field::new("origin_stride", DataType::Int64, false), Box::new(|n| Arc::new(Int64Array::from(vec![u.origin_stride as i64; n])))),
            (Field::new("state_window", DataType::Int64, false), Box::new(|n| Arc::new(Int64Array::from(vec![u.state_window as i64; n])))),
            (Field::new("kappa", DataType::Float64, false), Box::new(|n| Arc::new(Float64Array::from(vec![u.kappa; n])))),
        ];
        let unit_cols: Vec<_> = unit_cols.into_iter().filter(|(f, _)| schema.index_of(f.name()).is_err()).collect();
        fields.extend(unit_cols.iter().map(|(f, _)| f.clone()));
        let out_schema = Arc::new(Schema::new(fields));
        for (name, rows) in by_trace {
            let idx = UInt32Array::from(rows);
            let n = idx.len();
            let mut cols: Vec<ArrayRef> = Vec::new();
            for (c, f) in schema.fields().iter().enumerate() {
                if f.name() != "trace" {
                    cols.push(arrow::compute::take(all.column(c), &idx, None)?);
                }
            }
            cols.extend(unit_cols.iter().map(|(_, col)| col(n)));
            let dir = self.out.join(table.name()).join(format!("trace={}", hive_value(&name)));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut w = AtomicParquet::create(&dir, &format!("part-{}.parquet", u.id), out_schema.clone())?;
            w.write(&RecordBatch::try_new(out_schema.clone(), cols)?)?;
            w.finish()?;
        }
        Ok(())
    }
}

impl Sink for HiveSink {
    fn write(&mut self, table: Table, batch: &RecordBatch) -> anyhow::Result<()> {
        if TABLES.contains(&table) {
            self.batches.entry(table).or_default().push(batch.clone());
        }
        Ok(())
    }

    /// Publishes every part; the sweep writes the unit's marker after this returns.
    fn finish(&mut self, _manifest: &serde_json::Value) -> anyhow::Result<()> {
        for table in TABLES {
            let batches = self.batches.remove(&table).unwrap_or_default();
            self.publish(table, &batches)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_values_escape_path_characters() {
        assert_eq!(hive_value("gpt12-e16_top2.s1"), "gpt12-e16_top2.s1");
        assert_eq!(hive_value("a/b c"), "a%2Fb%20c");
    }
}
