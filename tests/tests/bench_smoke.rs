//! The benchmark driver at a tiny size, so `bench/run` cannot rot: every benchmark runs end to
//! end against the real stack and writes its table. Behaviour is checked, never timings.

// The driver is compiled into this test (rather than run as the `stowage-bench` example) so
// that it finds the workspace's binaries the way every e2e test does.
#[path = "../../bench/src/driver.rs"]
mod driver;

#[tokio::test(flavor = "multi_thread")]
async fn benchmark_driver_runs_every_benchmark_at_a_tiny_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("BENCHMARKS.md");
    std::fs::write(&out, "# Benchmarks\n\nnotes before\n").unwrap();
    let options = driver::Options::tiny(out.clone());
    let report = driver::run(&options).await.expect("the benchmark run");

    assert_eq!(report.data.bytes, options.size);
    assert!(report.wrap.restored_identically);
    let incremental = &report.incremental;
    assert!(
        incremental.second_parent_is_first,
        "the recreated pod's backup did not use the first snapshot as parent: {incremental:?}"
    );
    assert!(incremental.files_changed >= 1);
    // Only the changed files are read again; bare restic on the new path reads them all.
    assert!(
        incremental.second_read < incremental.bare_second_read,
        "{incremental:?}"
    );
    assert_eq!(report.parallel.len(), options.concurrency.len());
    for parallel in &report.parallel {
        assert_eq!(
            parallel.completed as usize, parallel.volumes,
            "{parallel:?}"
        );
        assert!(
            parallel.most_running <= parallel.concurrency,
            "{parallel:?}"
        );
    }
    assert_eq!(report.scale.completed as usize, options.scale_volumes);
    assert!(report.scale.orchestrator_peak_rss_kib > 0);

    let written = std::fs::read_to_string(&out).unwrap();
    assert!(
        written.starts_with("# Benchmarks\n\nnotes before\n"),
        "{written}"
    );
    for row in [
        "| Target | Result |",
        "| 1 |",
        "| 2 |",
        "| 3 |",
        "| 4 |",
        "| 5 |",
    ] {
        assert!(written.contains(row), "no `{row}` in:\n{written}");
    }
}
