//! Replays every `fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*` input through
//! the same harness function the `cargo fuzz` target calls (reliability §4.4), so the
//! seeds (every B-case of §4.3) and every crash found so far run in regular `cargo test`
//! without libFuzzer.

use std::path::Path;

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    (
        "registration_decode",
        common::fuzzing::check_registration_decode,
    ),
    ("key_parse", common::fuzzing::check_key_parse),
    ("config_synapse", synapse::fuzzing::check_config_synapse),
    ("config_nerve", nerve::fuzzing::check_config_nerve),
    ("render", |data| {
        synapse::fuzzing::check_render(data);
    }),
];

fn replay(dir: &Path, harness: Harness) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            // A fuzzer running meanwhile merges its corpus.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{} fails its oracle", path.display());
        n += 1;
    }
    n
}

#[test]
fn fuzz_corpora_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, harness) in TARGETS {
        let seeds = replay(&root.join("corpus").join(target), *harness);
        replay(&root.join("regressions").join(target), *harness);
        assert!(seeds > 0, "no corpus for {target}");
    }
}

/// The render harness is not vacuous: the good seeds render their servers (two entries
/// with one server name render one line), and the B-cases render only the valid ones.
#[test]
fn render_harness_renders_the_good_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/render");
    let read = |name: &str| std::fs::read(dir.join(name)).expect("seed");
    assert_eq!(
        synapse::fuzzing::check_render(&read("seed-good-and-dup")),
        2
    );
    assert_eq!(synapse::fuzzing::check_render(&read("seed-single")), 1);
    // ok, ok-v6, ok-full, b05c, b05d, b14, b18, b21 decode and pass the address policy.
    assert!(synapse::fuzzing::check_render(&read("seed-all-b-cases")) >= 3);
}
