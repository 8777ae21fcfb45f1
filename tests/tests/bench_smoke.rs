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
    // The tiny size stands the machine's restic in for the 0.14 baseline; downloading
    // Debian's package (the default of `bench/run`) needs the network, so only real runs do.
    let _ = driver::engine::OldRestic::Download;
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
    // The bare baseline of the incremental target: the right parent reads only the changes.
    assert!(
        incremental.bare_second_parent_read < incremental.bare_second_read,
        "{incremental:?}"
    );
    let commands = |runs: &[driver::ResticRun]| -> Vec<String> {
        runs.iter().map(|r| r.command.clone()).collect()
    };
    // The agent's restic ran under GNU time: its commands and peak RSS were logged.
    let wrap = &report.wrap_rounds[0];
    assert!(
        commands(&wrap.agent_backup_restic).contains(&"backup".to_string()),
        "{wrap:?}"
    );
    assert!(
        commands(&wrap.agent_restore_restic).contains(&"restore".to_string()),
        "{wrap:?}"
    );
    assert!(wrap.agent_backup_restic.iter().all(|r| r.peak_rss_kib > 0));
    assert!(wrap.bare_backup_rss_kib > 0 && wrap.bare_restore_rss_kib > 0);

    // 6: both restic versions backed up, backed up again and restored (sizes are checked).
    assert_eq!(report.versions.len(), options.rounds);
    for versions in &report.versions {
        for run in [&versions.old, &versions.new] {
            assert!(!run.version.is_empty(), "{versions:?}");
            assert!(run.backup.peak_rss_kib > 0, "{versions:?}");
            assert!(run.restore.peak_rss_kib > 0, "{versions:?}");
        }
    }

    // 7: after the change every backup reads the whole file again, whatever its parent;
    // stowage's used the previous snapshot as parent.
    let large = &report.large_file;
    assert_eq!(large.bytes, options.large_file_size);
    assert_eq!(large.rounds.len(), options.rounds);
    for round in &large.rounds {
        assert!(round.stowage_parent_ok, "{round:?}");
        assert!(
            commands(&round.stowage_restic).contains(&"backup".to_string()),
            "{round:?}"
        );
        assert!(round.stowage_read >= large.bytes, "{round:?}");
        assert!(round.bare_parent_read >= large.bytes, "{round:?}");
        assert!(round.velero_read >= large.bytes, "{round:?}");
    }

    // 8: the small files went through stowage and came back identical.
    let small = &report.small_files;
    assert_eq!(small.data.files.len(), options.small_files);
    assert_eq!(small.rounds.len(), options.rounds);
    for round in &small.rounds {
        assert!(round.restored_identically);
        assert!(round.agent_peak_rss_kib > 0);
        assert!(commands(&round.agent_restore_restic).contains(&"restore".to_string()));
    }

    // 9: four volumes backed up by one agent allowed four at once, one restic backup each.
    let footprint = &report.footprint;
    assert_eq!(
        footprint.completed as usize, footprint.volumes,
        "{footprint:?}"
    );
    assert_eq!(
        commands(&footprint.restic)
            .iter()
            .filter(|c| *c == "backup")
            .count(),
        footprint.volumes,
        "{footprint:?}"
    );
    assert!(footprint.most_in_flight >= 1, "{footprint:?}");
    assert!(
        footprint.idle_start_kib > 0 && footprint.peak_kib >= footprint.idle_start_kib,
        "{footprint:?}"
    );

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
        "| 6 |",
        "| 7 |",
        "| 8 |",
        "| 9 |",
        "| Target | This run | Result |",
    ] {
        assert!(written.contains(row), "no `{row}` in:\n{written}");
    }
}
