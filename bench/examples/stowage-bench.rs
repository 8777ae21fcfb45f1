//! `stowage-bench`: the benchmark driver behind `bench/run`. Parses its flags and runs
//! `bench/src/driver.rs`, which starts the e2e stack and writes the table to `BENCHMARKS.md`.

#[path = "../src/driver.rs"]
mod driver;

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "stowage-bench", about)]
struct Config {
    /// Bytes of generated data (`1GiB`, `64MiB`, `4M`, plain bytes).
    #[arg(long, env = "STOWAGE_BENCH_SIZE", default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Agent concurrency levels of the parallel-volumes benchmark (comma-separated).
    #[arg(
        long,
        env = "STOWAGE_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,2,4"
    )]
    concurrency: Vec<usize>,
    /// Annotated pod volumes of the orchestration-at-scale benchmark.
    #[arg(long, env = "STOWAGE_BENCH_SCALE_VOLUMES", default_value_t = 2000)]
    scale_volumes: usize,
    /// Nodes those volumes are spread over.
    #[arg(long, env = "STOWAGE_BENCH_SCALE_NODES", default_value_t = 100)]
    scale_nodes: usize,
    /// Instant-agent processes the nodes share.
    #[arg(long, env = "STOWAGE_BENCH_SCALE_AGENT_PROCESSES", default_value_t = 4)]
    scale_agent_processes: usize,
    /// Markdown file the table is written into (between its markers).
    #[arg(long, env = "STOWAGE_BENCH_OUT", default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Directory for generated data and bare restic repositories (default: the system temp dir).
    #[arg(long, env = "STOWAGE_BENCH_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Volumes of the parallel-volumes benchmark (the data is split over them).
    #[arg(long, env = "STOWAGE_BENCH_PARALLEL_VOLUMES", default_value_t = 8)]
    parallel_volumes: usize,
    /// Record `perf` profiles of the agent (one-volume backup) and the orchestrator (backup at
    /// scale) into this directory.
    #[arg(long, env = "STOWAGE_BENCH_PERF_DIR")]
    perf_dir: Option<PathBuf>,
    /// Copy every stack's service logs into this directory (one directory per stack).
    #[arg(long, env = "STOWAGE_BENCH_LOGS_DIR")]
    logs_dir: Option<PathBuf>,
    /// Rounds of the wrap-overhead, limit, restic-versions and small-files benchmarks, and
    /// changes of the large file; the table shows their medians.
    #[arg(long, env = "STOWAGE_BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Bytes of the large-file benchmark's one file (1 MiB of it changes).
    #[arg(long, env = "STOWAGE_BENCH_LARGE_FILE_SIZE", default_value = "4GiB", value_parser = parse_size)]
    large_file_size: u64,
    /// Files of 100 bytes in the many-small-files benchmark.
    #[arg(long, env = "STOWAGE_BENCH_SMALL_FILES", default_value_t = 200_000)]
    small_files: usize,
    /// A restic 0.14 binary for the restic-versions baseline; by default the run fetches
    /// Debian's package (`apt-get download restic=0.14.0-1+b5`) into its scratch directory and
    /// unpacks it there (nothing is installed).
    #[arg(long, env = "STOWAGE_BENCH_OLD_RESTIC")]
    old_restic: Option<PathBuf>,
}

/// `1GiB`, `512MiB`, `4M`, `100k` or plain bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 1GiB or 64MiB"))?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit `{unit}` (use KiB, MiB or GiB)")),
    };
    Ok(number * factor)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let options = driver::Options {
        size: config.size,
        concurrency: config.concurrency,
        scale_volumes: config.scale_volumes,
        scale_nodes: config.scale_nodes,
        scale_agent_processes: config.scale_agent_processes,
        out: config.out,
        work_dir: config.work_dir,
        parallel_volumes: config.parallel_volumes,
        perf_dir: config.perf_dir,
        logs_dir: config.logs_dir,
        rounds: config.rounds,
        large_file_size: config.large_file_size,
        small_files: config.small_files,
        old_restic: config.old_restic.map_or(
            driver::engine::OldRestic::Download,
            driver::engine::OldRestic::Binary,
        ),
    };
    let report = driver::run(&options).await?;
    eprintln!("[bench] wrote {}", options.out.display());
    // The smoke-size helper is for the CI test only.
    let _ = driver::Options::tiny;
    println!("{report:#?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1TB").is_err());
    }
}
