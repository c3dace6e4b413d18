//! Times SQL in scope's own query engine, query by query, the way the
//! reading commands run it: the store opened once ([`Store::open`], footers
//! read, tables registered, the CLI's default 2 GiB memory pool), then each
//! query executed and collected ([`Store::sql`]) `REPS` times.
//!
//! Usage: `query_time DATA REPS SQL...`. Prints one line per query on
//! standard output: `open_s <s>` first, then `query <i> rows <n> best_s <s>
//! median_s <s>` (the process's start-up and the store's opening are not in
//! the query times; `cargo xtask bench` times whole processes separately).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use scope_query::{OpenOptions, SessionSel, Store};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, reps, queries @ ..] = args.as_slice() else {
        bail!("usage: query_time DATA REPS SQL...");
    };
    let reps: usize = reps
        .parse()
        .with_context(|| format!("REPS {reps:?}: not a number"))?;
    let t = Instant::now();
    let store = Store::open(
        data,
        &OpenOptions {
            sessions: SessionSel::All,
            memory_limit: Some(2 << 30),
        },
    )?;
    println!("open_s {:.4}", t.elapsed().as_secs_f64());
    for (i, sql) in queries.iter().enumerate() {
        let mut times = Vec::with_capacity(reps.max(1));
        let mut rows = 0;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            let batches = store.sql(sql)?;
            times.push(t.elapsed().as_secs_f64());
            rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "query {i} rows {rows} best_s {:.4} median_s {:.4}",
            times[0],
            times[times.len() / 2]
        );
    }
    Ok(())
}
