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
    ("render", synapse::fuzzing::check_render),
];

fn replay(dir: &Path, harness: Harness) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
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
